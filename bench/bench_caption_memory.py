"""`fashioncap caption` over a folder runs in constant memory: peak RSS at 500 and at 5,000 images.

Run: `python -m bench.bench_caption_memory` (prints JSON). Each size is captioned by a fresh `fashioncap caption`
process (tiny BLIP, 32x32 PNGs, greedy 4-token captions, JSONL to a file), which reports its own peak resident set
size (VmHWM, see `peak_rss_of_module`). Captioning streams one batch at a time, so ten times the images should
cost (almost) no more memory: `ratio` = peak(5,000) / peak(500).
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (500, 5000)
CHILD_FLAG = "--report-own-peak-rss"
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
    from fashioncap.models.blip import build_tiny

    model, processor = build_tiny("a red blue dress boots with sleeve".split())
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def own_peak_rss_mib() -> float:
    """This process's own peak resident set size (VmHWM), in MiB: of its address space since exec only."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status: the peak RSS is measured on Linux only")


def peak_rss_of_module(module: str, args: list[str], timeout: float = 900) -> float:
    """Run `python -m module *args` in a child process and return ITS peak RSS (MiB), read by the child itself.

    Not the child's rusage (ru_maxrss, or os.wait4's): Linux carries the peak of the address space a process
    replaced at exec into it, so a child forked from a large parent reports at least the parent's RSS (the
    benchmark's process: 1,168 MiB at 500 and at 5,000 images, for a caption run that peaks at ~440 MiB).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="fashioncap-peak-") as tmp:
        report = Path(tmp) / "peak_rss_mib"
        cmd = [sys.executable, "-m", __spec__.name, CHILD_FLAG, str(report), module, *args]
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=timeout,
                              cwd=Path(__file__).resolve().parents[1])  # fmt: skip
        if proc.returncode:
            raise RuntimeError(
                f"{module} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"
            )
        return float(report.read_text())


def caption_peak_rss(model_dir: Path, folder: Path, out: Path) -> dict:
    """Run `fashioncap caption` on `folder` in a child process: its peak RSS (MiB), seconds and lines written."""
    start = time.perf_counter()
    args = ["caption", "--model-dir", str(model_dir), str(folder), "--out", str(out), *CAPTION_FLAGS]
    peak = peak_rss_of_module("fashioncap.cli", args)
    return {
        "peak_rss_mib": round(peak, 1),
        "seconds": round(time.perf_counter() - start, 2),
        "captions": len(out.read_text(encoding="utf-8").splitlines()),
    }


def _report_own_peak_rss(report: str, module: str, *args: str) -> None:
    """The child of `peak_rss_of_module`: run the module as __main__, then write this process's peak RSS."""
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    Path(report).write_text(str(own_peak_rss_mib()))
    sys.exit(code)


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
    if sys.argv[1:2] == [CHILD_FLAG]:
        _report_own_peak_rss(*sys.argv[2:])
    else:
        print(json.dumps(run(), indent=2))
