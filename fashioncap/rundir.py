"""The run directory: what `train` leaves in RUN/ and `eval` in RUN/eval/, and how other commands read it.

RUN/fashioncap_config.json   the resolved recipe (model, data, reward, generation, training sections)
RUN/all_results.json         {"train": ..., "test": ...}: the Trainer's metrics at the end of training
RUN/trainer_state.json       the log history (training curves)
RUN/adapter_*.safetensors    the LoRA adapter (or the model of a full fine-tune) and the processor files
RUN/README.md                the model card
RUN/eval/                    predictions.json, metrics.json, metrics.md from `fashioncap eval`
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RUN_CONFIG = "fashioncap_config.json"
RESULTS = "all_results.json"
TRAINER_STATE = "trainer_state.json"
EVAL_DIR = "eval"
PREDICTIONS = "predictions.json"
METRICS = "metrics.json"
METRICS_MARKDOWN = "metrics.md"
EVAL_FILES = (PREDICTIONS, METRICS, METRICS_MARKDOWN)


def read_json(path: Path):
    """The file's JSON, or None when there is no such file."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run_config(run_dir: str | Path) -> dict | None:
    """The recipe a run was trained with, as `train` saved it; None for a dir that is not a fashioncap run."""
    return read_json(Path(run_dir) / RUN_CONFIG)


def default_eval_dir(model_dir: str) -> Path:
    """RUN/eval for a local run or model dir; outputs/eval/<sanitised id> for a Hub id (zero-shot)."""
    path = Path(model_dir)
    if path.is_dir():
        return path / EVAL_DIR
    return Path("outputs") / EVAL_DIR / re.sub(r"[^A-Za-z0-9._-]+", "--", model_dir).strip("-.")


def eval_metrics(run_dir: str | Path) -> dict | None:
    """`fashioncap eval`'s metrics.json of a run, or None when it was not evaluated."""
    return read_json(Path(run_dir) / EVAL_DIR / METRICS)


def eval_predictions(run_dir: str | Path) -> dict:
    """image id -> caption from the run's eval predictions ({} when it was not evaluated)."""
    return {p["image_id"]: p["caption"] for p in read_json(Path(run_dir) / EVAL_DIR / PREDICTIONS) or []}


def reported_scores(run_dir: str | Path) -> dict | None:
    """The run's test scores: `fashioncap eval`'s metrics.json when there is one, else the training-time test."""
    evaluated = eval_metrics(run_dir)
    if evaluated is not None:
        return evaluated
    return (read_json(Path(run_dir) / RESULTS) or {}).get("test")
