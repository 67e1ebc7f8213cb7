"""Caption metrics: pycocoevalcap run as the COCO caption evaluation does, plus ALS/SLS from the rewards.

Two doors to the same code: `compute_caption_metrics` (plain function, dicts keyed by image id) and the local
`evaluate` module at `EVALUATE_MODULE` (`evaluate.load(str(EVALUATE_MODULE))`, works offline). Every score
comes with a 95% bootstrap interval over images; `compare_runs` gives paired intervals of two runs' differences.
"""

from pathlib import Path

from fashioncap.metrics.bootstrap import bootstrap_ci, paired_bootstrap
from fashioncap.metrics.cider_d import CiderD
from fashioncap.metrics.coco_caption import (
    METRIC_NAMES,
    STATISTICS,
    MetricUnavailable,
    compare_runs,
    compute_caption_metrics,
    ptb_tokenize,
    spice_command,
)
from fashioncap.metrics.health import caption_health

EVALUATE_MODULE = Path(__file__).resolve().parent / "fashion_caption"

__all__ = [
    "EVALUATE_MODULE",
    "METRIC_NAMES",
    "STATISTICS",
    "CiderD",
    "MetricUnavailable",
    "bootstrap_ci",
    "caption_health",
    "compare_runs",
    "compute_caption_metrics",
    "paired_bootstrap",
    "ptb_tokenize",
    "spice_command",
]
