"""Data layer: COCO-format loading into `datasets`, the synthetic fashion set, the FACAD builder, data checks.

The names below are imported on first use (PEP 562): the collator and the trainer live in this package and must
import on machines without `datasets` (a GPU image), and `fashioncap data --help` should not pay for it. The
library itself imports from the submodules.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataError": "coco",
    "available_splits": "coco",
    "group_references": "coco",
    "load_captions": "coco",
    "load_categories": "coco",
    "read_categories": "coco",
    "references_file": "coco",
    "with_references": "coco",
    "build_synthetic": "synthetic",
    "ensure_synthetic": "synthetic",
    "build_facad": "facad",
    "download_images": "download",
    "check_data_dir": "check",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__():
    return sorted(list(globals()) + __all__)
