"""Evaluate a run: caption a split with a trained run (or a base model, zero-shot) and score it.

Writes OUT/predictions.json (COCO results format), metrics.json (what `fashioncap score` prints for those
predictions, plus `reward/<name>` for every built-in reward and each reward the run's recipe names, and the
captions' "health"), metrics.md and per_image.json (each metric's per-image scores, for paired comparisons of
runs). They are built in a temporary directory and moved into place together at the end, so an interrupted eval leaves the previous
results (or none) and a rerun simply redoes it. Captions that collapse (most images sharing a few captions)
get a warning on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm

from fashioncap import rundir
from fashioncap.data.coco import group_references, load_captions, references_file
from fashioncap.errors import OutputExistsError
from fashioncap.hub import refresh_run_card
from fashioncap.inference import (
    caption_batches,
    generation_settings,
    load_captioner,
    map_in_shards,
    process_state,
)
from fashioncap.io_utils import atomic_directory, write_json_atomic, write_text_atomic
from fashioncap.metrics import METRIC_NAMES
from fashioncap.metrics.files import default_categories, load_references, score_files
from fashioncap.metrics.health import caption_health, collapse_signs
from fashioncap.metrics.reward_scores import recipe_reward_scores
from fashioncap.rewards import REWARD_FUNCS
from fashioncap.scoretable import HEADLINE_METRICS, score_table, unavailable_notes


def metrics_markdown(metrics: dict, heading: str, name: str) -> str:
    """The eval's metrics.md: every metric as one table row, then the metrics that could not run and why."""
    columns = list(dict.fromkeys([*METRIC_NAMES, *HEADLINE_METRICS]))
    columns += [k for k in metrics if k.startswith("reward/")]
    columns = [c for c in columns if c in metrics]
    notes = unavailable_notes(metrics)
    return (
        f"{heading}\n\n{score_table({name: metrics}, columns, label='model')}\n{metrics['num_images']} images.\n"
        + (f"\n{notes}" if notes else "")
    )


def predict_split(
    model, processor, data_dir: str | Path, split: str, batch_size: int, **generate_kwargs
) -> tuple[list[dict], list[bool]]:
    """Caption every image of the split once: (COCO results records in the split's image order, which captions
    used every new token without ending). Under `accelerate launch` each rank captions a share of the images
    and every rank gets all the records.

    Only the image column reaches the generator: the references are never within its reach.
    """
    images = group_references(load_captions(data_dir, [split])[split]).select_columns(["image_id", "image"])

    def caption_rows(rows: list[int]) -> list[tuple[str, bool]]:
        batches = caption_batches(model, processor, (images[i]["image"] for i in rows), batch_size,
                                  **generate_kwargs)  # fmt: skip
        return [pair for captions, hits in batches for pair in zip(captions, hits, strict=True)]

    results = map_in_shards(range(len(images)), caption_rows, batch_size)
    progress = tqdm(results, total=len(images), desc=f"captioning {split}", unit="img", file=sys.stderr,
                    disable=not process_state().is_main_process)  # fmt: skip
    pairs = list(progress)
    predictions = [{"image_id": i, "caption": c} for i, (c, _) in zip(images["image_id"], pairs, strict=True)]
    return predictions, [hit for _, hit in pairs]


def health_of(predictions: list[dict], references: Path, limit_hits: list[bool]) -> dict:
    """`caption_health` of the predictions against their references (`limit_hits`: which captions used every
    new token without ending); warns on stderr when they collapsed (repetition, runs to the length limit:
    template reuse alone is reported, not warned about)."""
    reference_captions = load_references(references)[0]
    captions = [p["caption"] for p in predictions]
    health = caption_health(captions, [reference_captions[p["image_id"]] for p in predictions], limit_hits)
    signs = collapse_signs(
        health["repeated_trigram_share"], health["length_limit_share"], health["mean_length"]
    )
    if signs:
        print(
            f"WARNING: the captions collapsed: of {health['num_captions']}, {', '.join(signs)} "
            "('health' in metrics.json; in training, turn rl_weight down or use loss_type: grpo)",
            file=sys.stderr,
        )
    return health


def _check_out_dir(out_dir: Path) -> None:
    """The output dir is replaced as a whole: refuse one that holds anything but a previous eval's files."""
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in rundir.EVAL_FILES)
        if foreign:
            raise OutputExistsError(
                f"{out_dir} holds files eval did not write ({', '.join(foreign[:5])}): pick another --out-dir"
            )


def evaluate_run(
    model_dir: str,
    data_dir: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    **generation_overrides,
) -> dict | None:
    """Caption `split` with `model_dir`, score it, write the eval files; returns the metrics object (None on
    the other ranks of `accelerate launch`, which caption their share of the images)."""
    out_dir = Path(out_dir) if out_dir else rundir.default_eval_dir(model_dir, split)
    _check_out_dir(out_dir)
    references = references_file(data_dir, split)
    settings = generation_settings(model_dir, **generation_overrides)
    model, processor = load_captioner(model_dir)
    predictions, limit_hits = predict_split(model, processor, data_dir, split, batch_size, **settings)
    if not process_state().is_main_process:
        return None  # another rank of `accelerate launch`: the main process scores and writes, once
    recipe = rundir.run_config(model_dir) or {}
    recipe_rewards = (recipe.get("reward") or {}).get("reward_funcs") or []
    # the run's own category names (Hub data) score SLS as in training; else the data dir's categories.json
    categories = (recipe.get("data") or {}).get("category_names")
    categories = Path(categories) if categories else default_categories(references)
    # every built-in reward for every run, so an MLE run scores its RL twin's rewards too
    reward_specs = list(dict.fromkeys([*REWARD_FUNCS, *recipe_rewards]))
    with atomic_directory(out_dir, overwrite=True) as tmp:
        write_json_atomic(tmp / rundir.PREDICTIONS, predictions)
        metrics = score_files(references, tmp / rundir.PREDICTIONS, categories, per_image=True)
        write_json_atomic(tmp / rundir.PER_IMAGE, metrics.pop("per_image"))
        metrics.update(recipe_reward_scores(reward_specs, predictions, references, categories))
        metrics.update(split=split, data_dir=str(data_dir), model_dir=str(model_dir), generation=settings,
                       versions=rundir.library_versions())  # fmt: skip
        metrics["health"] = health_of(predictions, references, limit_hits)
        write_json_atomic(tmp / rundir.METRICS, metrics)
        heading = (
            f"# {model_dir} on {data_dir} ({split})\n\n"
            f"generation: {', '.join(f'{k}={v}' for k, v in settings.items())}, batch size {batch_size}"
        )
        write_text_atomic(
            tmp / rundir.METRICS_MARKDOWN, metrics_markdown(metrics, heading, Path(model_dir).name)
        )
    refresh_run_card(model_dir)  # the run's own card carries the scores just computed
    return metrics
