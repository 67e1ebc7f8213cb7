"""Batched captioning from pixels only, and `fashioncap caption` over images and folders.

`generate_captions` is the one generation path of `eval` and `caption`: the model sees `pixel_values` and the
run's generation settings, never a reference caption (the stock seq2seq prediction step feeds the references
to `generate`, see stack-notes). It consumes its images lazily, one batch at a time, so a folder of any size
is captioned in constant memory.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

GENERATION_FLAGS = ("num_beams", "max_new_tokens", "min_new_tokens")


def generation_settings(model_dir: str | os.PathLike, **overrides) -> dict:
    """The run's "generation" recipe section (the recipe defaults for other models), then non-None overrides."""
    from fashioncap.configs import GenerationArguments
    from fashioncap.train import RUN_CONFIG

    settings = GenerationArguments().generate_kwargs()
    config = Path(model_dir) / RUN_CONFIG
    if config.is_file():
        settings.update(json.loads(config.read_text(encoding="utf-8")).get("generation") or {})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` items (the last may be shorter), drawn lazily from `items`."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1 (got {size})")
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def generate_captions(
    model, processor, images: Iterable, batch_size: int = 16, **generate_kwargs
) -> Iterator[str]:
    """Yield one caption per PIL image, in order, generating `batch_size` images at a time from pixels alone."""
    import torch

    from fashioncap.data.check import to_rgb

    for batch in batched(images, batch_size):
        pixel_values = processor.image_processor(
            [to_rgb(im) for im in batch], return_tensors="pt"
        ).pixel_values
        with torch.inference_mode():
            sequences = model.generate(
                pixel_values=pixel_values.to(model.device, model.dtype), **generate_kwargs
            )
        yield from (c.strip() for c in processor.batch_decode(sequences, skip_special_tokens=True))


def load_captioner(model_dir: str):
    """(model, processor) on the best device here: a run dir, merged model dir or Hub id."""
    import torch

    from fashioncap.modeling import load_for_inference

    model, processor = load_for_inference(model_dir)
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), processor


# --- `fashioncap caption` ---------------------------------------------------------------------------------------


def iter_image_paths(inputs: Iterable[str]) -> Iterator[Path]:
    """Files as given, and the image files under each folder, walked lazily in sorted order."""
    from PIL import Image

    extensions = {ext.lower() for ext in Image.registered_extensions()}
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            yield path  # a missing or unreadable file is reported by the caller
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if Path(name).suffix.lower() in extensions:
                    yield Path(root) / name


@contextlib.contextmanager
def open_output(path: str | None):
    """stdout, or `path` written atomically: it appears only once every line is written."""
    from fashioncap.io_utils import atomic_open

    if path is None:
        yield sys.stdout
        return
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        yield f


def caption_paths(model, processor, paths: Iterable[Path], batch_size: int = 16, **generate_kwargs):
    """Yield (path, caption, None) per captioned image and (path, None, reason) per unreadable one.

    Images are decoded as the generator reaches them, so at most one batch is held in memory. An unreadable
    file is reported as soon as it is met, which can be before the captions of the batch it would have joined.
    """
    from fashioncap.data.check import ImageProblem, open_rgb

    pending: deque[Path] = deque()
    failures: deque[tuple[Path, str]] = deque()

    def images():
        for path in paths:
            try:
                image = open_rgb(path)
            except ImageProblem as err:
                failures.append((path, str(err)))
                continue
            pending.append(path)
            yield image

    def reported():
        while failures:
            path, reason = failures.popleft()
            yield path, None, reason

    for caption in generate_captions(model, processor, images(), batch_size, **generate_kwargs):
        yield from reported()
        yield pending.popleft(), caption, None
    yield from reported()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (recursive)"
    )
    parser.add_argument(
        "--model-dir", required=True, help="a trained run, a merged model dir, or a Hub model id"
    )
    parser.add_argument("--out", help="write here instead of stdout (JSONL, or CSV with --csv)")
    parser.add_argument("--csv", action="store_true", help="CSV rows path,caption instead of JSONL")
    add_generation_arguments(parser)


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Batch size and the generation flags shared with `fashioncap eval` (defaults: the run's recipe)."""
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-beams", type=int, help="default: the run's generation settings (3)")
    parser.add_argument("--max-new-tokens", type=int, help="default: the run's generation settings (50)")
    parser.add_argument("--min-new-tokens", type=int, help="default: the run's generation settings (5)")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    settings = generation_settings(args.model_dir, **{k: getattr(args, k) for k in GENERATION_FLAGS})
    model, processor = load_captioner(args.model_dir)
    captioned = failed = 0
    with open_output(args.out) as out:
        writer = csv.writer(out) if args.csv else None
        if writer:
            writer.writerow(["path", "caption"])
        results = caption_paths(model, processor, iter_image_paths(args.inputs), args.batch_size, **settings)
        for path, caption, error in tqdm(results, unit="img", disable=None, file=sys.stderr):
            if error is not None:
                failed += 1
                tqdm.write(f"fashioncap caption: skipped {path}: {error}", file=sys.stderr)
            else:
                captioned += 1
            if writer and caption is not None:
                writer.writerow([str(path), caption])
            elif not writer:
                record = (
                    {"path": str(path), "caption": caption}
                    if error is None
                    else {"path": str(path), "error": error}
                )
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"fashioncap caption: {captioned} captioned, {failed} unreadable", file=sys.stderr)
    return 0 if captioned else 1
