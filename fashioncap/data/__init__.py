"""Data layer: COCO-format loading into `datasets`, the synthetic fashion set, the FACAD builder, data checks.

Names are imported on first use, so `fashioncap data --help` does not pay for `datasets` (PEP 562).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataError": "coco",
    "load_captions": "coco",
    "load_categories": "coco",
    "group_references": "coco",
    "references_file": "coco",
    "available_splits": "coco",
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
