"""Shared fixtures. Data fixtures are small so the whole data suite stays fast on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FACAD_TEXT_SAMPLE = REPO / "tests/data/facad_records.jsonl"


@pytest.fixture(scope="session")
def pushed_files() -> list[str]:
    """What `fashioncap push` uploads from a run, sorted: the adapter, the processor files and the card."""
    return [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A tiny synthetic data dir (read-only: tests that modify data build their own)."""
    from fashioncap.data.synthetic import build_synthetic

    return build_synthetic(
        tmp_path_factory.mktemp("synthetic") / "data", train=24, val=8, test=8, pretrain=24
    )


@pytest.fixture
def make_coco_dir(tmp_path):
    """Write a data dir in the docs/data.md layout from a list of (file_name, [annotation dicts]) and return it."""

    def make(
        images: list[tuple[str, list[dict]]], categories=None, split: str = "train", name: str = "coco"
    ) -> Path:
        root = tmp_path / name
        coco = {"info": {}, "licenses": [], "images": [], "annotations": []}
        ann_id = 0
        for image_id, (file_name, anns) in enumerate(images, start=1):
            path = root / "images" / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 6), (image_id * 20 % 255, 100, 50)).save(path)
            coco["images"].append({"id": image_id, "file_name": file_name, "width": 8, "height": 6})
            for ann in anns:
                ann_id += 1
                coco["annotations"].append({"id": ann_id, "image_id": image_id, **ann})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
        (root / "categories.json").write_text(
            json.dumps(categories or {"1": "dress", "2": ["Boot", "boots"]})
        )
        return root

    return make


@pytest.fixture(scope="session")
def facad_descriptions() -> list[dict]:
    """400 real FACAD records (id, title, description): tests/data/README.md says which and why."""
    with open(FACAD_TEXT_SAMPLE, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, synthetic_dir) -> Path:
    """A tiny BLIP saved as a merged model dir (model + processor), with the synthetic set's vocabulary."""
    from fashioncap.data import load_captions
    from fashioncap.models.blip import build_tiny
    from fashioncap.text import caption_vocabulary

    model, processor = build_tiny(
        caption_vocabulary(load_captions(synthetic_dir, ["test"])["test"]["caption"])
    )
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def table_row():
    """Read the row `name` of a Markdown table in `text` as {column: cell}."""

    def row(text: str, name: str) -> dict[str, str]:
        header: list[str] = []
        lines = text.splitlines()
        for line, following in zip(lines, [*lines[1:], ""], strict=True):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if following.startswith("|---"):
                header = cells
            elif line.startswith("|") and cells[0] == name and header:
                return dict(zip(header, cells, strict=True))
        raise AssertionError(f"no row {name!r} in:\n{text}")

    return row
