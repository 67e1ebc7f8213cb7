"""The synthetic fashion set: determinism, caption/attribute/category consistency, visible attributes, atomicity."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from fashioncap.data import synthetic
from fashioncap.data.synthetic import (
    CATEGORIES,
    COLOURS,
    PATTERNS,
    build_synthetic,
    draw_item,
    ensure_synthetic,
)

SMALL = {"train": 12, "val": 4, "test": 4, "pretrain": 12}


def _contains_phrase(caption: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", caption) is not None


def _annotations(data_dir, split):
    return json.loads((data_dir / "annotations" / f"{split}.json").read_text())


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = build_synthetic(tmp_path / "a", seed=3, **SMALL)
    b = build_synthetic(tmp_path / "b", seed=3, **SMALL)
    c = build_synthetic(tmp_path / "c", seed=4, **SMALL)
    for split in SMALL:
        name = f"annotations/{split}.json"
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    assert (a / "categories.json").read_bytes() == (b / "categories.json").read_bytes()
    for image in sorted((a / "images").rglob("*.png")):
        assert image.read_bytes() == (b / image.relative_to(a)).read_bytes()


def test_layout_and_report(synthetic_dir):
    report = json.loads((synthetic_dir / "build_report.json").read_text())
    assert report["counts"] == {"pretrain": 24, "train": 24, "val": 8, "test": 8}
    assert report["skipped"] == [] and report["seed"] == 0 and report["images_per_second"] > 0
    assert report["references"] == synthetic.DEFAULT_REFERENCES == 5
    for split, count in report["counts"].items():
        coco = _annotations(synthetic_dir, split)
        per_image = 1 if split == "pretrain" else 5
        assert len(coco["images"]) == count and len(coco["annotations"]) == count * per_image
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        for image in coco["images"]:
            with Image.open(synthetic_dir / "images" / image["file_name"]) as im:
                assert im.size == (64, 64) and im.mode == "RGB"
    categories = json.loads((synthetic_dir / "categories.json").read_text())
    assert len(categories) >= 12
    assert categories["1"] == ["tee", "tees", "t shirt", "t shirts"]


def test_pretrain_captions_name_category_and_colour(synthetic_dir):
    categories = json.loads((synthetic_dir / "categories.json").read_text())
    for ann in _annotations(synthetic_dir, "pretrain")["annotations"]:
        caption = ann["caption"]
        assert caption == caption.lower() and re.fullmatch(r"[a-z ]+", caption), caption
        assert any(_contains_phrase(caption, form) for form in categories[str(ann["category"])]), caption
        assert _contains_phrase(caption, ann["attributes"][0]) and ann["attributes"][0] in COLOURS


@pytest.mark.parametrize("split", ["train", "test"])
def test_attributes_are_the_complete_catalogue_whatever_the_caption_names(synthetic_dir, split):
    by_id = {c.id: c for c in CATEGORIES}
    for ann in _annotations(synthetic_dir, split)["annotations"]:
        category = by_id[ann["category"]]
        colour, pattern, *shape, noun = ann["attributes"]
        assert colour in COLOURS and pattern in PATTERNS and noun == category.noun
        assert " ".join(shape) in category.shapes
        assert re.fullmatch(r"[a-z ]+", ann["caption"]), ann["caption"]


def test_references_leave_out_what_facad_descriptions_leave_out(tmp_path):
    """v4: each reference names the category, colour, pattern and shape at FACAD's rates (docs/data.md), category
    by category; stand-ins are never a category form (SLS 0); the build report states the realised rates."""
    data = build_synthetic(tmp_path / "d", train=1000, val=0, test=0, pretrain=0)
    annotations = _annotations(data, "train")["annotations"]
    rates = json.loads((data / "build_report.json").read_text())["rates"]["train"]
    assert rates == synthetic.realised_rates(annotations)
    assert rates["names_colour"] == pytest.approx(synthetic.NAMES_COLOUR, abs=0.015)
    assert rates["names_pattern"] == pytest.approx(synthetic.NAMES_PATTERN, abs=0.03)
    assert rates["names_shape"] == pytest.approx(synthetic.NAMES_SHAPE, abs=0.03)
    assert rates["non_visual"] == pytest.approx(synthetic.NON_VISUAL, abs=0.03)
    assert 14 <= rates["words_mean"] <= 22
    forms = {form for c in CATEGORIES for form in c.forms}
    by_id = {c.id: c for c in CATEGORIES}
    for category in CATEGORIES:
        assert not set(category.stand_ins) & forms, category.stand_ins
        captions = [f" {a['caption']} " for a in annotations if a["category"] == category.id]
        named = sum(f" {category.noun} " in c for c in captions) / len(captions)
        assert named == pytest.approx(category.named, abs=0.06), category.noun
    dresses = [a["caption"] for a in annotations if by_id[a["category"]].noun == "dress"]
    assert any(" gown " in f" {c} " for c in dresses) and any(" piece " in f" {c} " for c in dresses)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_each_image_has_five_references_from_different_templates_naming_the_same_item(synthetic_dir, split):
    by_image: dict[int, list[dict]] = {}
    for ann in _annotations(synthetic_dir, split)["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image_id, anns in by_image.items():
        assert len(anns) == 5, image_id
        assert len({a["caption"] for a in anns}) == 5, anns  # five different templates
        assert len({a["category"] for a in anns}) == 1
        assert len({frozenset(a["attributes"]) for a in anns}) == 1, anns  # the same item in every caption


def test_pretrain_does_not_depend_on_the_count_of_references(tmp_path):
    one = build_synthetic(tmp_path / "one", **SMALL, references=1)
    five = build_synthetic(tmp_path / "five", **SMALL, references=5)
    assert (one / "annotations/pretrain.json").read_bytes() == (
        five / "annotations/pretrain.json"
    ).read_bytes()
    assert len(_annotations(one, "train")["annotations"]) == SMALL["train"]
    with pytest.raises(ValueError, match="references must be between 1 and 8"):
        build_synthetic(tmp_path / "nine", **SMALL, references=9)


def test_pretrain_is_generic_and_covers_every_attribute_word(tmp_path):
    data = build_synthetic(tmp_path / "d", train=200, val=0, test=0, pretrain=400)
    pretrain = _annotations(data, "pretrain")["annotations"]
    train = _annotations(data, "train")["annotations"]
    attribute_words = {a for ann in train + pretrain for a in ann["attributes"]}
    pretrain_words = {w for ann in pretrain for w in ann["caption"].split()}
    assert pretrain_words <= attribute_words | {"a", "pair", "of"}  # no descriptive template words
    assert {a for ann in train for a in ann["attributes"]} <= pretrain_words  # base model can say every word
    assert max(len(ann["caption"].split()) for ann in pretrain) <= 8
    assert any(p in pretrain_words for p in PATTERNS)
    train_words = {w for ann in train for w in ann["caption"].split()}
    assert len(train_words - attribute_words) >= 20  # the descriptive style has its own vocabulary


def _render(category, colour="red", pattern="solid", shape=None, size=64):
    return np.asarray(
        draw_item(size, category, colour, pattern, shape or category.shapes[0], np.random.default_rng(7))
    )


@pytest.mark.parametrize("category", CATEGORIES, ids=lambda c: c.noun)
def test_shape_attribute_is_visible(category):
    first, second = (_render(category, shape=s) for s in category.shapes)
    changed = np.any(first != second, axis=-1).mean()
    assert changed > 0.02, f"{category.noun}: {category.shapes} differ in only {changed:.1%} of pixels"


def test_patterns_drawn_inside_and_white_visible():
    tee = CATEGORIES[0]
    solid = _render(tee, "blue", "solid")
    assert len({tuple(p) for p in solid.reshape(-1, 3)} - {synthetic.BACKGROUND}) <= 3  # fill + outline (+AA)
    for pattern in PATTERNS[1:]:
        drawn = _render(tee, "blue", pattern)
        inside = drawn[np.any(drawn != synthetic.BACKGROUND, axis=-1)]
        assert (np.abs(inside.astype(int) - COLOURS["blue"]).sum(-1) > 200).mean() > 0.1, pattern
    white = _render(tee, "white")
    assert (white.sum(-1) < 3 * 200).sum() > 50  # an outline separates white from the light background


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = synthetic.draw_item

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic, "draw_item", failing)
    with pytest.raises(KeyboardInterrupt):
        build_synthetic(tmp_path / "out", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_and_ensure(tmp_path):
    out = build_synthetic(tmp_path / "out", **SMALL)
    with pytest.raises(FileExistsError):
        build_synthetic(out, **SMALL)
    before = (out / "build_report.json").stat().st_mtime_ns
    assert ensure_synthetic(out, **SMALL) == out
    assert (out / "build_report.json").stat().st_mtime_ns == before  # same settings: kept
    ensure_synthetic(out, **{**SMALL, "train": 5})  # other settings: rebuilt
    assert len(_annotations(out, "train")["images"]) == 5
    ensure_synthetic(out, **{**SMALL, "train": 5, "references": 2})  # another count of references: rebuilt
    assert len(_annotations(out, "train")["annotations"]) == 10
    report = json.loads((out / "build_report.json").read_text())
    (out / "build_report.json").write_text(json.dumps({**report, "version": synthetic.DRAWING_VERSION - 1}))
    ensure_synthetic(out, **{**SMALL, "train": 5, "references": 2})  # drawn by an older version: rebuilt
    assert json.loads((out / "build_report.json").read_text())["version"] == synthetic.DRAWING_VERSION
    fresh = ensure_synthetic(tmp_path / "fresh", **SMALL)
    assert (fresh / "annotations" / "train.json").is_file()
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileExistsError):  # never replaces a directory that is not a synthetic set
        ensure_synthetic(tmp_path / "mine", **SMALL)


def test_cli(tmp_path, capsys):
    from fashioncap.cli import main

    args = ["data", "synthetic", "--out", str(tmp_path / "cli"), "--train", "3", "--val", "1", "--test", "1"]
    assert main([*args, "--pretrain", "2", "--image-size", "48", "--seed", "5", "--references", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"pretrain": 2, "train": 3, "val": 1, "test": 1} and report["references"] == 3
    assert len(_annotations(tmp_path / "cli", "train")["annotations"]) == 9
    with Image.open(tmp_path / "cli" / "images" / "train" / "000000.png") as im:
        assert im.size == (48, 48)
