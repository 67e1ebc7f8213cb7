"""Batched captioning from pixels only, over a data split (`eval`) or images and folders (`caption`).

`generate_captions` is the one generation path of `eval` and `caption`: the model sees `pixel_values` and the
run's generation settings, never a reference caption (the stock seq2seq prediction step feeds the references
to `generate`, docs/stack-traps.md). It consumes its images lazily, one batch at a time, so a folder of any size
is captioned in constant memory.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image

from fashioncap import rundir
from fashioncap.configs import FashionCapTrainingArguments
from fashioncap.data.images import ImageProblem, open_rgb, to_rgb
from fashioncap.modeling import load_for_inference

GENERATION_FLAGS = ("num_beams", "max_new_tokens", "min_new_tokens")


def generation_settings(model_dir: str | os.PathLike | None = None, **overrides) -> dict:
    """The run's "generation" recipe section (the recipe defaults for other models), then non-None overrides."""
    settings = {f: FashionCapTrainingArguments.__dataclass_fields__[f].default for f in GENERATION_FLAGS}
    if model_dir is not None:
        settings.update((rundir.run_config(model_dir) or {}).get("generation") or {})
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
    model, processor = load_for_inference(model_dir)
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), processor


def iter_image_paths(inputs: Iterable[str]) -> Iterator[Path]:
    """Files as given, and the image files under each folder, walked lazily in sorted order."""
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


def caption_paths(model, processor, paths: Iterable[Path], batch_size: int = 16, **generate_kwargs):
    """Yield (path, caption, None) per captioned image and (path, None, reason) per unreadable one.

    Images are decoded as the generator reaches them, so at most one batch is held in memory. An unreadable
    file is reported as soon as it is met, which can be before the captions of the batch it would have joined.
    """
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
