"""`fashioncap caption` over a folder runs in constant memory: peak RSS at 500 and at 5,000 images.

Run: `python -m bench.bench_caption_memory` (prints JSON). Each size is captioned by a fresh `fashioncap caption`
process (tiny BLIP, 32x32 PNGs, greedy 4-token captions, JSONL to a file), and its peak resident set size is read
from the kernel (`os.wait4` rusage of that child alone, ru_maxrss). Captioning streams one batch at a time, so
ten times the images should cost (almost) no more memory: `ratio` = peak(5,000) / peak(500).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SIZES = (500, 5000)
CAPTION_FLAGS = ["--num-beams", "1", "--max-new-tokens", "4", "--min-new-tokens", "1", "--batch-size", "16"]


def make_images(folder: Path, count: int, size: int = 32) -> Path:
    """`count` small distinct PNGs (a few seconds for 5,000)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (count, 3), dtype=np.uint8)
    for i, colour in enumerate(colours):
        Image.new("RGB", (size, size), tuple(int(c) for c in colour)).save(
            folder / f"{i:05d}.png", compress_level=1
        )
    return folder


def make_model_dir(out: Path) -> Path:
    """A tiny BLIP with random weights, saved as a merged model dir (what `--model-dir` loads)."""
    from fashioncap.modeling import build_tiny_blip

    model, processor = build_tiny_blip("a red blue dress boots with sleeve".split())
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def caption_peak_rss(model_dir: Path, folder: Path, out: Path, timeout: float = 900) -> dict:
    """Run `fashioncap caption` on `folder` in a child process: its peak RSS (MiB), seconds and lines written.

    `os.wait4` gives the rusage of that one child (RUSAGE_CHILDREN would be the maximum over every child so far).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "fashioncap.cli", "caption", "--model-dir", str(model_dir), str(folder),
           "--out", str(out), *CAPTION_FLAGS]  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
        stderr.seek(0)
        message = stderr.read().decode(errors="replace")
    if proc.returncode:
        raise RuntimeError(f"fashioncap caption exited {proc.returncode}: {message[-2000:]}")
    return {
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "seconds": round(time.perf_counter() - start, 2),
        "captions": len(out.read_text(encoding="utf-8").splitlines()),
    }


def run(sizes: tuple[int, int] = SIZES) -> dict:
    """Peak RSS of `fashioncap caption` at each size and their ratio (largest over smallest)."""
    with tempfile.TemporaryDirectory(prefix="fashioncap-capmem-") as tmp:
        tmp = Path(tmp)
        model_dir = make_model_dir(tmp / "model")
        make_images(tmp / "images", max(sizes))
        result: dict = {"image_px": 32, "caption_flags": " ".join(CAPTION_FLAGS)}
        for n in sizes:
            folder = tmp / f"images_{n}"
            folder.mkdir()
            for i in range(n):  # hard links: one set of files, folders of each size
                os.link(tmp / "images" / f"{i:05d}.png", folder / f"{i:05d}.png")
            result[str(n)] = caption_peak_rss(model_dir, folder, tmp / f"captions_{n}.jsonl")
        small, large = (result[str(n)]["peak_rss_mib"] for n in (min(sizes), max(sizes)))
        result["ratio"] = round(large / small, 3)
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
