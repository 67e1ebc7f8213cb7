"""Data layer: COCO-format loading into `datasets`, the synthetic fashion set, the FACAD builder, data checks."""

from fashioncap.data.check import check_data_dir
from fashioncap.data.coco import (
    DataError,
    available_splits,
    group_references,
    load_captions,
    load_categories,
    references_file,
)
from fashioncap.data.download import download_images
from fashioncap.data.facad import build_facad
from fashioncap.data.synthetic import build_synthetic, ensure_synthetic

__all__ = [
    "DataError",
    "available_splits",
    "build_facad",
    "build_synthetic",
    "check_data_dir",
    "download_images",
    "ensure_synthetic",
    "group_references",
    "load_captions",
    "load_categories",
    "references_file",
]
