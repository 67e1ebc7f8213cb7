"""Batching for captioning: pixels for every row, caption tokens (as the processor's model family lays them
out for its decoder) only for training rows.

Training batches also carry every other column of the data set as a list (`caption`, `attributes`,
`category`, ...): the trainer hands them to the reward functions. Evaluation rows (from `group_references`)
carry `references` instead of `caption`, so an eval batch holds the image and its id and nothing a model could
copy a reference caption from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from PIL import Image, ImageOps

from fashioncap.data.images import to_rgb
from fashioncap.models import family_of_processor

IGNORE_INDEX = -100
MODEL_INPUTS = ("pixel_values", "input_ids", "attention_mask", "labels")


def jitter(image: Image.Image, rng: random.Random, max_shift: float = 0.1) -> Image.Image:
    """Random horizontal flip and a small shift, filled with the corner colour (the studio background)."""
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    w, h = image.size
    dx, dy = (round(rng.uniform(-max_shift, max_shift) * s) for s in (w, h))
    return image.transform(image.size, Image.AFFINE, (1, 0, -dx, 0, 1, -dy), fillcolor=image.getpixel((0, 0)))


@dataclass
class CaptionCollator:
    processor: object
    max_length: int = 50
    augment: bool = False
    seed: int = 0
    rank: int = 0  # the process's rank: ranks seeded alike draw their own augmentation
    _rng: random.Random | None = field(default=None, init=False, repr=False)
    _rng_stream: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self._caption_inputs = family_of_processor(self.processor).caption_inputs

    def augmentation_rng(self) -> random.Random:
        """This process's augmentation stream, one per run seed, rank and dataloader worker. A worker's torch
        seed is drawn anew whenever the loader starts its workers (each epoch, unless they persist, and then
        their streams run on), so no worker replays another's flips and shifts, nor its own of the last epoch;
        without workers the main process's stream runs on from epoch to epoch."""
        worker = torch.utils.data.get_worker_info()
        stream = (self.seed, self.rank, worker.seed if worker else None)
        if stream != self._rng_stream:
            self._rng, self._rng_stream = random.Random("/".join(map(str, stream))), stream
        return self._rng

    def pixel_values(self, images: list[Image.Image], augment: bool = False) -> torch.Tensor:
        images = [to_rgb(im) for im in images]
        if augment:
            rng = self.augmentation_rng()
            images = [jitter(im, rng) for im in images]
        return self.processor.image_processor(images, return_tensors="pt").pixel_values

    def __call__(self, rows: list[dict]) -> dict:
        training = "caption" in rows[0]
        batch = {
            "pixel_values": self.pixel_values([r["image"] for r in rows], augment=self.augment and training),
            "image_ids": torch.tensor([int(r["image_id"]) for r in rows]),
        }
        if not training:
            return batch
        captions = [r["caption"] for r in rows]
        input_ids, attention_mask = self._caption_inputs(self.processor.tokenizer, captions, self.max_length)
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        labels[:, 0] = IGNORE_INDEX  # the start token is given, never predicted
        batch.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        batch.update(
            {column: [r[column] for r in rows] for column in rows[0] if column not in ("image", "image_id")}
        )
        return batch
