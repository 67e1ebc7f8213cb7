"""The recipe's reward functions as evaluation metrics: `reward/<name>`, the mean reward of the predictions.

Each prediction is scored once per reference annotation of its image, with that annotation's columns as the
keyword arguments the trainer gives the reward in training (`caption`, `references`, `attributes`,
`category`, `image_id`); the image's score is the mean over its annotations, the metric the mean over images.
A reward with a `prepare` hook is prepared with the scored split's annotations (so `reward/cider` takes its
document frequencies from them, as pycocoevalcap's CIDEr does). ALS and SLS are already
headline metrics (computed over all references of an image at once) and are not repeated here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from fashioncap.data.coco import read_categories
from fashioncap.metrics.files import default_categories
from fashioncap.rewards import get_reward_funcs, prepare_rewards

HEADLINE_REWARDS = ("als", "sls")


def recipe_reward_scores(
    specs: Sequence[str], predictions: Sequence[dict], references: Path, categories: Path | None = None
) -> dict:
    """{"reward/<name>": mean score} for each reward spec of a recipe that is not a headline metric;
    `categories`: the categories.json the rewards match (default: the references' data dir's)."""
    specs = [s for s in specs if s not in HEADLINE_REWARDS]
    if not specs:
        return {}
    caption_of = {p["image_id"]: p["caption"] for p in predictions}
    annotations = [
        a
        for a in json.loads(Path(references).read_text(encoding="utf-8"))["annotations"]
        if a["image_id"] in caption_of
    ]
    references_of: dict = defaultdict(list)
    for a in annotations:
        references_of[a["image_id"]].append(a["caption"])
    columns = {
        "caption": [a["caption"] for a in annotations],
        "references": [references_of[a["image_id"]] for a in annotations],
        "attributes": [a.get("attributes") or [] for a in annotations],
        "category": [a.get("category", -1) for a in annotations],
        "image_id": [a["image_id"] for a in annotations],
    }
    categories = categories or default_categories(Path(references))
    wordmap = read_categories(categories) if categories else {}
    completions = [caption_of[i] for i in columns["image_id"]]
    funcs = get_reward_funcs(specs)
    prepare_rewards(funcs, columns)
    scores = {}
    for name, func in funcs.items():
        per_image: dict = defaultdict(list)
        for image_id, value in zip(
            columns["image_id"], func(completions, category_wordmap=wordmap, **columns), strict=True
        ):
            per_image[image_id].append(float(value))
        scores[f"reward/{name}"] = sum(sum(v) / len(v) for v in per_image.values()) / len(per_image)
    return scores
