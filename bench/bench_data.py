"""Data-layer throughput: synthetic generation and FACAD build (decode, resize, re-encode), in images/s.

Run: `python -m bench.bench_data` (prints JSON). Source images for the FACAD build are generated first and
are not timed; they are 600x900 JPEGs, the aspect of FACAD's full-resolution product photos.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def bench_synthetic(root: Path, images: int = 2000, image_size: int = 64) -> dict:
    from fashioncap.data.synthetic import build_synthetic

    start = time.perf_counter()
    build_synthetic(root / "synthetic", train=images, val=0, test=0, pretrain=0, image_size=image_size)
    seconds = time.perf_counter() - start
    return {
        "images": images,
        "image_size": image_size,
        "seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 1),
    }


def bench_facad(root: Path, records: int = 300, image_size: int = 384, workers: int | None = None) -> dict:
    from fashioncap.data.facad import build_facad, colour_dir

    workers = workers or os.cpu_count() or 1
    rng = np.random.default_rng(0)
    meta = []
    for item_id in range(1, records + 1):
        folder = root / "facad_raw" / str(item_id) / colour_dir("Black/ White")
        folder.mkdir(parents=True)
        noise = rng.integers(0, 255, size=(90, 60, 3), dtype=np.uint8)  # textured, so JPEG work is realistic
        Image.fromarray(noise).resize((600, 900), Image.Resampling.BILINEAR).save(
            folder / "0.jpeg", quality=90
        )
        meta.append(
            {
                "id": item_id,
                "images": [{"color": "Black/ White", "0": "https://example.com/x.jpeg"}],
                "description": "a soft knit tee with a relaxed fit",
                "categoryid": 1,
                "category": "tee",
                "attr": ["nah", "soft", "knit", "tee", "nah", "nah", "relaxed", "fit"],
            }
        )
    (root / "meta.json").write_text(json.dumps(meta))
    start = time.perf_counter()
    build_facad(
        root / "meta.json",
        root / "facad_raw",
        root / "facad",
        train=records,
        val=0,
        test=0,
        image_size=image_size,
        workers=workers,
        progress=False,
    )
    seconds = time.perf_counter() - start
    return {
        "records": records,
        "source_size": "600x900",
        "image_size": image_size,
        "workers": workers,
        "seconds": round(seconds, 3),
        "images_per_second": round(records / seconds, 1),
    }


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        return {
            "synthetic": bench_synthetic(root),
            "facad_build": bench_facad(root),
            "cpu_count": os.cpu_count(),
        }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
