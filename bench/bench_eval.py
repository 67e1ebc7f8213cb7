"""Eval generation throughput: batched (64 images per `generate`) vs one image at a time, beam search 3.

Run: `python -m bench.bench_eval` (prints JSON). The tiny BLIP (random weights, the synthetic set's vocabulary)
captions 200 synthetic test images with the recipe's generation settings; images are decoded beforehand, so
the numbers are preprocessing + `generate` through `fashioncap.inference.generate_captions`, the path of
`fashioncap eval` and `fashioncap caption`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path


def _throughput(model, processor, images: list, batch_size: int, settings: dict) -> dict:
    from fashioncap.inference import generate_captions

    start = time.perf_counter()
    captions = list(generate_captions(model, processor, images, batch_size, **settings))
    seconds = time.perf_counter() - start
    return {
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(captions) / seconds, 2),
        "mean_caption_words": round(sum(len(c.split()) for c in captions) / len(captions), 1),
    }


def run(images: int = 200, batch_size: int = 64) -> dict:
    import torch

    from fashioncap.data import build_synthetic, references_file
    from fashioncap.data.images import open_rgb
    from fashioncap.inference import generation_settings
    from fashioncap.models.blip import build_tiny
    from fashioncap.text import caption_vocabulary

    settings = generation_settings()  # the recipe defaults: beams 3, 50 tokens, at least 5
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = build_synthetic(Path(tmp) / "data", train=0, val=0, test=images, pretrain=0)
        annotations = json.loads(references_file(data_dir, "test").read_text())["annotations"]
        model, processor = build_tiny(caption_vocabulary(a["caption"] for a in annotations))
        pil_images = [open_rgb(p) for p in sorted((data_dir / "images" / "test").iterdir())]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    _throughput(model, processor, pil_images[:2], 2, settings)  # warm-up
    batched = _throughput(model, processor, pil_images, batch_size, settings)
    single = _throughput(model, processor, pil_images, 1, settings)
    return {
        "model": "tiny BLIP (random weights)",
        "images": len(pil_images),
        "generation": settings,
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "batched": batched,
        "single": single,
        "eval_batched_over_single": round(batched["images_per_second"] / single["images_per_second"], 2),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
