"""The run directory: what `train` leaves in RUN/ and `eval` in RUN/eval/, and how other commands read it.

RUN/fashioncap_config.json   the resolved recipe (model, data, reward, generation, training sections), family
RUN/all_results.json         {"train": ..., "test": ..., "scored_checkpoint": "final (step N)"}
RUN/trainer_state.json       the log history (training curves)
RUN/adapter_*.safetensors    the LoRA adapter (or the model of a full fine-tune) and the processor files;
                             adapter_config.json names a local base relative to RUN (`store_base_relative`)
RUN/README.md                the model card
RUN/eval/<split>/            predictions.json, metrics.json, metrics.md, per_image.json from `fashioncap eval`
                             (a run evaluated before evals were per split has them in RUN/eval/: its test split)
"""

from __future__ import annotations

import json
import os
import re
from importlib import metadata
from pathlib import Path

from fashioncap import __version__
from fashioncap.io_utils import write_json_atomic

RUN_CONFIG = "fashioncap_config.json"
FAMILY = "family"  # RUN_CONFIG's key for the model family; a run saved without one is BLIP
ADAPTER_CONFIG = "adapter_config.json"
RESULTS = "all_results.json"
TRAINER_STATE = "trainer_state.json"
EVAL_DIR = "eval"
DEFAULT_SPLIT = "test"
PREDICTIONS = "predictions.json"
METRICS = "metrics.json"
METRICS_MARKDOWN = "metrics.md"
PER_IMAGE = "per_image.json"  # metric -> {image id: score}: what paired comparisons of two runs resample
EVAL_FILES = (PREDICTIONS, METRICS, METRICS_MARKDOWN, PER_IMAGE)


def read_json(path: Path):
    """The file's JSON, or None when there is no such file."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run_config(run_dir: str | Path) -> dict | None:
    """The recipe a run was trained with, as `train` saved it; None for a dir that is not a fashioncap run."""
    return read_json(Path(run_dir) / RUN_CONFIG)


def library_versions() -> dict[str, str | None]:
    """The versions of the libraries behind a run's numbers (None for one that is not installed)."""
    versions: dict[str, str | None] = {"fashioncap": __version__}
    for name in ("transformers", "peft", "torch", "accelerate", "pycocoevalcap"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def default_eval_dir(model_dir: str, split: str = DEFAULT_SPLIT) -> Path:
    """RUN/eval/<split> for a local run or model dir; outputs/eval/<sanitised id>/<split> for a Hub id."""
    path = Path(model_dir)
    if path.is_dir():
        return path / EVAL_DIR / split
    return Path("outputs") / EVAL_DIR / re.sub(r"[^A-Za-z0-9._-]+", "--", model_dir).strip("-.") / split


def _eval_dir(run_dir: str | Path, split: str) -> Path:
    """Where the run's eval of `split` lies: RUN/eval/<split>, or RUN/eval itself for the test split of a run
    evaluated before evals were kept per split."""
    per_split, flat = Path(run_dir) / EVAL_DIR / split, Path(run_dir) / EVAL_DIR
    if split == DEFAULT_SPLIT and not per_split.is_dir() and (flat / METRICS).is_file():
        return flat
    return per_split


def evaluated_splits(run_dir: str | Path) -> list[str]:
    """The splits the run has an eval of, sorted."""
    root = Path(run_dir) / EVAL_DIR
    splits = {p.parent.name for p in root.glob(f"*/{METRICS}")}
    return sorted(splits | ({DEFAULT_SPLIT} if (root / METRICS).is_file() else set()))


def eval_metrics(run_dir: str | Path, split: str = DEFAULT_SPLIT) -> dict | None:
    """`fashioncap eval`'s metrics.json of the run's `split` (with its "split"), or None when it has none.

    A metrics.json that records another split than the one asked for is not that split's scores: None."""
    metrics = read_json(_eval_dir(run_dir, split) / METRICS)
    if metrics is None or metrics.get("split", split) != split:
        return None
    return {**metrics, "split": split}


def eval_per_image(run_dir: str | Path, split: str = DEFAULT_SPLIT) -> dict | None:
    """`fashioncap eval`'s per-image scores of the run's `split` (metric -> {image id string: score}), or None.

    An eval from before METEOR kept its per-image statistics holds per-caption METEOR scores, whose mean is not
    the corpus METEOR it reported: that entry is left out (re-run `fashioncap eval` to compare METEOR)."""
    per_image = read_json(_eval_dir(run_dir, split) / PER_IMAGE)
    meteor = (per_image or {}).get("METEOR") or {}
    if any(isinstance(score, int | float) for score in meteor.values()):
        del per_image["METEOR"]
    return per_image


def eval_predictions(run_dir: str | Path, split: str = DEFAULT_SPLIT) -> dict:
    """image id -> caption from the run's eval predictions of `split` ({} when it has none)."""
    return {p["image_id"]: p["caption"] for p in read_json(_eval_dir(run_dir, split) / PREDICTIONS) or []}


def scored_checkpoint(run_dir: str | Path) -> str | None:
    """Which weights training saved and scored: 'final (step N)' or 'best by eval_CIDEr (step N)'."""
    return (read_json(Path(run_dir) / RESULTS) or {}).get("scored_checkpoint")


def reported_scores(run_dir: str | Path, split: str = DEFAULT_SPLIT) -> dict | None:
    """The run's scores on `split`, with their "split": `fashioncap eval`'s metrics.json when there is one,
    else the scores training computed, when the split it scored (the recipe's test_split) is `split`."""
    evaluated = eval_metrics(run_dir, split)
    if evaluated is not None:
        return evaluated
    scored_split = ((run_config(run_dir) or {}).get("data") or {}).get("test_split", DEFAULT_SPLIT)
    at_training = (read_json(Path(run_dir) / RESULTS) or {}).get("test")
    return {**at_training, "split": split} if at_training is not None and scored_split == split else None


def resolve_base(run_dir: str | Path, base: str | None) -> str | None:
    """Where the base model an adapter at `run_dir` names lies, so a run loads from any working directory and
    after its outputs/ tree is moved: an absolute path as it is; a relative one against the run dir (how `train`
    stores it), else, for a run trained before that, against the working directory and then each folder above
    the run (training stored it relative to where it ran). A Hub id, or a base found nowhere, is returned as
    named (a missing one stored relative to the run is named from the run, for the error)."""
    if not base or Path(base).is_absolute():
        return base
    run = Path(run_dir).resolve()
    for root in (run, Path.cwd(), *run.parents):
        if (root / base).exists():
            return str((root / base).resolve())
    return str(run / base) if Path(base).parts[0] == ".." else base


def adapter_base(run_dir: str | Path) -> str | None:
    """The base model of the adapter at `run_dir`, resolved (`resolve_base`): None for a dir that holds no
    adapter, "" for an adapter that names none (trained on a model built in memory)."""
    config = read_json(Path(run_dir) / ADAPTER_CONFIG)
    if config is None:
        return None
    return resolve_base(run_dir, config.get("base_model_name_or_path")) or ""


def store_base_relative(run_dir: str | Path) -> None:
    """Rewrite the adapter's local base as a path relative to `run_dir`, so that the run keeps finding it from
    any working directory and when the tree holding both is moved or copied (a Hub id stays as it is)."""
    path = Path(run_dir) / ADAPTER_CONFIG
    config = read_json(path)
    base = resolve_base(run_dir, (config or {}).get("base_model_name_or_path"))
    if not base or not Path(base).exists():
        return
    relative = os.path.relpath(base, Path(run_dir).resolve())
    write_json_atomic(path, {**config, "base_model_name_or_path": relative})
