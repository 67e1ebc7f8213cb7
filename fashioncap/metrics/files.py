"""Scoring files: COCO-results predictions against a COCO-captions references file (what `score` and `eval` do).

Inputs that break the contract (unknown images, missing or duplicate predictions, unreadable files) raise
`ScoreInputError` naming the images.
"""

from __future__ import annotations

import json
from pathlib import Path

from fashioncap.errors import UserError, missing_path
from fashioncap.metrics.coco_caption import compute_caption_metrics
from fashioncap.metrics.ids import describe_ids


class ScoreInputError(UserError, ValueError):
    """The references or predictions cannot be scored as given."""


def _read_json(path: Path, what: str):
    if not Path(path).exists():
        raise missing_path(what, path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ScoreInputError(f"cannot read the {what} {path}: {err}") from err


def load_references(path: Path) -> tuple[dict, dict | None, dict | None]:
    """(captions, attributes, categories) per image id from a COCO captions file.

    attributes/categories are None when no annotation carries them; an image whose annotations carry none
    maps to None (ALS then falls back to its reference captions' words).
    """
    data = _read_json(path, "references")
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise ScoreInputError(f"{path} is not in COCO captions format (no 'annotations' list)")
    captions: dict = {}
    attributes: dict = {}
    categories: dict = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise ScoreInputError(f"{path}: annotation #{i} lacks an 'image_id' or a string 'caption'")
        image_id = ann["image_id"]
        captions.setdefault(image_id, []).append(ann["caption"])
        if ann.get("attributes"):
            attributes.setdefault(image_id, []).extend(ann["attributes"])
        if ann.get("category") is not None:
            categories.setdefault(image_id, set()).add(ann["category"])
    if not captions:
        raise ScoreInputError(f"{path} has no annotations")
    conflicting = [k for k, cats in categories.items() if len(cats) > 1]
    if conflicting:
        raise ScoreInputError(
            f"{path}: annotations of one image disagree on its category: {describe_ids(conflicting)}"
        )
    return (
        captions,
        {k: attributes.get(k) for k in captions} if attributes else None,
        {k: next(iter(categories[k])) if k in categories else None for k in captions} if categories else None,
    )


def load_predictions(path: Path, references: dict) -> dict:
    """image id -> caption from a COCO results file, checked against the referenced images."""
    data = _read_json(path, "predictions")
    if not isinstance(data, list) or not all(
        isinstance(p, dict) and "image_id" in p and "caption" in p for p in data
    ):
        raise ScoreInputError(
            f'{path} is not in COCO results format ([{{"image_id": ..., "caption": ...}}, ...])'
        )
    predictions: dict = {}
    duplicates: list = []
    for p in data:
        if p["image_id"] in predictions and p["image_id"] not in duplicates:
            duplicates.append(p["image_id"])
        predictions[p["image_id"]] = p["caption"]
    problems = []
    if duplicates:
        problems.append(f"several predictions for {describe_ids(duplicates)}")
    unknown = [k for k in predictions if k not in references]
    if unknown:
        problems.append(f"predictions for images not in the references: {describe_ids(unknown)}")
    missing = [k for k in references if k not in predictions]
    if missing:
        problems.append(f"no prediction for {describe_ids(missing)}")
    not_text = [k for k, v in predictions.items() if not isinstance(v, str)]
    if not_text:
        problems.append(f"captions that are not strings for {describe_ids(not_text)}")
    if problems:
        raise ScoreInputError(f"{path}: " + "; ".join(problems))
    return predictions


def default_categories(references: Path) -> Path | None:
    """A data dir's categories.json when the references are its annotations/<split>.json."""
    candidate = references.resolve().parent.parent / "categories.json"
    return candidate if references.resolve().parent.name == "annotations" and candidate.is_file() else None


def score_files(
    references: Path, predictions: Path, categories: Path | None = None, per_image: bool = False
) -> dict:
    """The metrics object for two files, as `fashioncap score` prints it (with "per_image" when asked)."""
    captions, attributes, image_categories = load_references(references)
    preds = load_predictions(predictions, captions)
    categories = categories or default_categories(references)
    wordmap = _read_json(categories, "categories") if categories and image_categories is not None else None
    if wordmap is not None and not isinstance(wordmap, dict):
        raise ScoreInputError(f"{categories} is not a JSON object (category id -> name or [names])")
    return compute_caption_metrics(
        preds, captions, attributes, image_categories, wordmap, per_image=per_image
    )
