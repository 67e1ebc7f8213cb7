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
from accelerate import PartialState
from accelerate.utils import gather_object
from PIL import Image

from fashioncap import rundir
from fashioncap.configs import FashionCapTrainingArguments
from fashioncap.data.images import ImageProblem, open_rgb, to_rgb
from fashioncap.decoding import decode, encode_images, text_decoder, truncated_samples
from fashioncap.errors import closest_path_hint
from fashioncap.models import load_for_inference
from fashioncap.text import decode_captions

GENERATION_FLAGS = ("num_beams", "max_new_tokens", "min_new_tokens")
NOT_AN_IMAGE = "not an image file"


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
    for captions, _ in caption_batches(model, processor, images, batch_size, **generate_kwargs):
        yield from captions


def caption_batches(
    model, processor, images: Iterable, batch_size: int = 16, **generate_kwargs
) -> Iterator[tuple[list[str], list[bool]]]:
    """Per batch of `batch_size` PIL images: their captions, and which of them used every new token without
    ending (counted on the generated ids, which re-tokenising the text only approximates)."""
    for batch in batched(images, batch_size):
        pixel_values = processor.image_processor(
            [to_rgb(im) for im in batch], return_tensors="pt"
        ).pixel_values
        with torch.inference_mode():
            sequences = caption_pixels(
                model, pixel_values=pixel_values.to(model.device, model.dtype), **generate_kwargs
            )
        cut_short = truncated_samples(sequences, text_decoder(model).eos_token_id)
        yield decode_captions(processor, sequences), cut_short.tolist()


def caption_pixels(model, pixel_values: torch.Tensor, **generate_kwargs) -> torch.Tensor:
    """Caption token ids from pixels alone: each image encoded once, then the decoder with its cross-attention
    K/V shared by its beams (fashioncap.decoding; the same tokens as the model's `generate`)."""
    return decode(model, encode_images(model, pixel_values), **generate_kwargs)


def load_captioner(model_dir: str):
    """(model, processor) on this process's device (its own GPU under `accelerate launch`): a run dir, merged
    model dir or Hub id."""
    model, processor = load_for_inference(model_dir)
    return model.to(process_state().device), processor


def iter_image_paths(inputs: Iterable[str]) -> Iterator[Path]:
    """Files as given, and every file under each folder, walked lazily in sorted order.

    Nothing is left out silently: `caption_paths` reports a missing or unreadable file, and one that is not an
    image file by its extension, as skipped."""
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            yield from (Path(root) / name for name in sorted(files))


def caption_paths(model, processor, paths: Iterable[Path], batch_size: int = 16, **generate_kwargs):
    """Yield (path, caption, None) per captioned image and (path, None, reason) per skipped file: unreadable,
    or NOT_AN_IMAGE (a file whose extension no image format has).

    Images are decoded as the generator reaches them, so at most one batch is held in memory. An unreadable
    file is reported as soon as it is met, which can be before the captions of the batch it would have joined.
    """
    pending: deque[Path] = deque()
    failures: deque[tuple[Path, str]] = deque()
    extensions = {ext.lower() for ext in Image.registered_extensions()}

    def images():
        for path in paths:
            if path.is_file() and path.suffix.lower() not in extensions:
                failures.append((path, NOT_AN_IMAGE))
                continue
            try:
                image = open_rgb(path)
            except ImageProblem as err:
                failures.append((path, str(err) + ("" if path.exists() else closest_path_hint(path))))
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


# --- data-parallel: `accelerate launch -m fashioncap eval|caption` ------------------------------------------


def process_state() -> PartialState:
    """accelerate's view of this process: one of several ranks under `accelerate launch`, else the only one.
    CPU ranks need cpu=True, or each would caption everything alone (docs/stack-traps.md)."""
    return PartialState(cpu=not torch.cuda.is_available())


def map_in_shards(items: Iterable, work, share_size: int) -> Iterator:
    """`work` over `items` split across the ranks; every rank gets all the results, in the order of `items`.

    The items are dealt round-robin, chunk by chunk: of each chunk of ranks x `share_size` items, rank r takes
    items r, r + ranks, ... and `work` maps that share to one result per item. Every rank walks the same items
    (a folder of a million photos is never listed in memory), so all agree on the number of chunks and gather
    together; one process is the same loop with one share per chunk.
    """
    state = process_state()
    ranks, rank = state.num_processes, state.process_index
    for chunk in batched(items, share_size * ranks):
        shares = gather_object([work(chunk[rank::ranks])])  # one list per rank, in rank order
        for position in range(len(shares[0])):
            yield from (share[position] for share in shares if position < len(share))


def caption_paths_in_shards(model, processor, paths: Iterable[Path], batch_size: int = 16, **generate_kwargs):
    """`caption_paths` data-parallel over the ranks, each rank captioning up to `batch_size` files per chunk;
    every rank gets every result, in the order of `paths` (skipped files in their place)."""

    def caption_share(share: list[Path]) -> list[tuple]:
        results = list(caption_paths(model, processor, share, batch_size, **generate_kwargs))
        captioned = deque(r for r in results if r[2] is None)
        skipped = deque(r for r in results if r[2] is not None)
        return [skipped.popleft() if skipped and skipped[0][0] == p else captioned.popleft() for p in share]

    return map_in_shards(paths, caption_share, batch_size)
