"""Caption metrics: pycocoevalcap run as the COCO caption evaluation does, plus ALS/SLS from the rewards.

Two doors to the same code: `compute_caption_metrics` (plain function, dicts keyed by image id) and the local
`evaluate` module at `EVALUATE_MODULE` (`evaluate.load(str(EVALUATE_MODULE))`, works offline).
"""

from pathlib import Path

from fashioncap.metrics.coco_caption import (
    METRIC_NAMES,
    MetricUnavailable,
    compute_caption_metrics,
    ptb_tokenize,
    spice_command,
)

EVALUATE_MODULE = Path(__file__).resolve().parent / "fashion_caption"

__all__ = [
    "EVALUATE_MODULE",
    "METRIC_NAMES",
    "MetricUnavailable",
    "compute_caption_metrics",
    "ptb_tokenize",
    "spice_command",
]
