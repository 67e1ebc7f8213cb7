"""Caption metrics: pycocoevalcap run as the COCO caption evaluation does, plus ALS/SLS from the rewards.

Two doors to the same code: `compute_caption_metrics` (plain function, dicts keyed by image id) and the local
`evaluate` module at `EVALUATE_MODULE` (`evaluate.load(str(EVALUATE_MODULE))`, works offline). Every score
comes with a 95% bootstrap interval over images; `compare_runs` gives paired intervals of two runs' differences.
"""

import importlib
from pathlib import Path

EVALUATE_MODULE = Path(__file__).resolve().parent / "fashion_caption"

# Resolved on first use (PEP 562): importing a light submodule (health, cider_d) must not import pycocoevalcap,
# which the GPU machine's check (bench/gpu_check.py) and the training step do without.
_SOURCES = {
    "bootstrap_ci": "bootstrap",
    "paired_bootstrap": "bootstrap",
    "CiderD": "cider_d",
    "METRIC_NAMES": "coco_caption",
    "STATISTICS": "coco_caption",
    "MetricUnavailable": "coco_caption",
    "compare_runs": "coco_caption",
    "compute_caption_metrics": "coco_caption",
    "ptb_tokenize": "coco_caption",
    "spice_command": "coco_caption",
    "caption_health": "health",
}


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)


__all__ = ["EVALUATE_MODULE", *sorted(_SOURCES)]
