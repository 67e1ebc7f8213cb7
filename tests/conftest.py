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


@pytest.fixture(scope="module")
def tiny_florence2_dir(tmp_path_factory, synthetic_dir) -> Path:
    """A tiny Florence-2 saved as a model dir (model + processor), with the synthetic set's vocabulary."""
    from fashioncap.data import load_captions
    from fashioncap.models import build_tiny_model
    from fashioncap.text import caption_vocabulary

    words = caption_vocabulary(load_captions(synthetic_dir, ["test"])["test"]["caption"])
    model, processor = build_tiny_model(words, family_name="florence2")
    out = tmp_path_factory.mktemp("tiny-florence2")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def write_adapter_run(model, processor, run: Path, recipe: dict) -> Path:
    """`run` as `train` leaves a LoRA run (adapter, processor, recipe), every trained weight of the PEFT `model`
    first moved far from its start, so that the adapter, and each part of it, changes the captions."""
    import torch

    from fashioncap import rundir

    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(torch.randn_like(parameter) * 0.5)
    model.save_pretrained(run)
    processor.save_pretrained(run)
    (run / rundir.RUN_CONFIG).write_text(json.dumps(recipe))
    return run


@pytest.fixture(scope="module")
def florence2_run(tmp_path_factory, tiny_florence2_dir, synthetic_dir) -> Path:
    """A trial-4-shaped Florence-2 run (its recipe naming its family): LoRA on the decoder and the last DaViT
    block, moved far from its start; generation settings beam 2, 2 to 8 new tokens."""
    from transformers import Florence2ForConditionalGeneration

    from fashioncap import rundir
    from fashioncap.configs import load_config
    from fashioncap.models import lora_targets
    from fashioncap.models.florence2 import load_processor
    from fashioncap.models.lora import apply_lora

    base = Florence2ForConditionalGeneration.from_pretrained(tiny_florence2_dir)
    model = apply_lora(base, lora_targets(base, "decoder+vision", 1), r=4, alpha=8)
    recipe = load_config(REPO / "recipes/demo/trial4.yaml").to_dict()
    recipe["model"].update(model_name_or_path=str(tiny_florence2_dir), vision_lora_layers=1)
    recipe["data"]["data_dir"] = str(synthetic_dir)
    recipe["generation"] = {"num_beams": 2, "max_new_tokens": 8, "min_new_tokens": 2}
    run = tmp_path_factory.mktemp("florence2-run") / "trial4"
    return write_adapter_run(
        model, load_processor(str(tiny_florence2_dir)), run, {**recipe, rundir.FAMILY: "florence2"}
    )
