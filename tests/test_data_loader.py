"""load_captions / group_references / load_categories: columns, lazy images, defaults, safe paths, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import pytest
from PIL import Image

from fashioncap.data import (
    DataError,
    group_references,
    load_captions,
    load_categories,
    references_file,
    with_references,
)


def test_synthetic_columns_and_lazy_images(synthetic_dir):
    dd = load_captions(synthetic_dir)
    assert list(dd) == ["train", "val", "test", "pretrain"]
    train = dd["train"]
    assert train.column_names == ["image_id", "image", "caption", "attributes", "category"]
    assert isinstance(train.features["image"], datasets.Image) and train.features["image"].decode
    assert train.features["image_id"].dtype == "int64" and train.features["category"].dtype == "int64"
    stored = train.data.column("image").to_pylist()[0]
    assert stored["bytes"] is None and stored["path"].endswith(
        "images/train/000000.png"
    )  # a path, not pixels
    row = train[0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (64, 64)
    assert isinstance(row["caption"], str) and row["attributes"] and row["category"] >= 1
    assert list(load_captions(synthetic_dir, splits=["test"])) == ["test"]


def test_one_row_per_annotation_defaults_and_grouping(make_coco_dir):
    root = make_coco_dir(
        [
            (
                "a.png",
                [
                    {"caption": "a red dress", "attributes": ["red", "dress"], "category": 1},
                    {"caption": "a red midi dress", "attributes": ["midi", "red"], "category": 1},
                ],
            ),
            ("sub/b.png", [{"caption": "black boots"}]),
        ]
    )
    train = load_captions(root)["train"]
    assert train["image_id"][:] == [1, 1, 2]
    assert train["attributes"][:] == [["red", "dress"], ["midi", "red"], []]
    assert train["category"][:] == [1, 1, -1]
    grouped = group_references(train)
    assert grouped.column_names == ["image_id", "image", "references", "attributes", "category"]
    assert grouped["image_id"][:] == [1, 2]
    assert grouped["references"][0] == ["a red dress", "a red midi dress"]
    assert grouped["attributes"][0] == ["red", "dress", "midi"]  # union, first-seen order
    assert grouped[1]["image"].size == (8, 6) and grouped["category"][:] == [1, -1]
    assert references_file(root, "train") == (root / "annotations" / "train.json").resolve()


def test_group_references_after_shuffle_keeps_rows_together(synthetic_dir):
    train = load_captions(synthetic_dir, splits=["train"])["train"].shuffle(seed=0)
    grouped = group_references(train)
    assert len(train) == 5 * len(grouped), "five references per synthetic image"
    assert sorted(grouped["image_id"][:]) == sorted(set(train["image_id"][:]))
    first = grouped[0]
    assert [
        train[i]["caption"] for i in range(len(train)) if train[i]["image_id"] == first["image_id"]
    ] == first["references"]


def test_with_references_keeps_a_row_per_annotation_and_adds_all_captions_of_its_image(synthetic_dir):
    train = load_captions(synthetic_dir, splits=["train"])["train"].shuffle(seed=0)
    rows = with_references(train)
    assert len(rows) == len(train) and rows["caption"][:] == train["caption"][:]
    grouped = {row["image_id"]: row["references"] for row in group_references(train)}
    for row in rows.select_columns(["image_id", "caption", "references"]):
        assert row["references"] == grouped[row["image_id"]] and row["caption"] in row["references"]


def test_categories_normalised(make_coco_dir):
    root = make_coco_dir(
        [("a.png", [{"caption": "x"}])], categories={"1": "Dress", "2": ["Boot", "ankle  BOOTS", "boot"]}
    )
    assert load_categories(root) == {1: ["dress"], 2: ["boot", "ankle boots"]}
    (root / "categories.json").write_text(json.dumps({"x": "dress"}))
    with pytest.raises(DataError, match=r"categories\.json, record x, field 'id'"):
        load_categories(root)


@pytest.mark.parametrize("file_name", ["../outside.png", "/etc/passwd", "sub/../../outside.png"])
def test_file_name_escaping_data_dir_is_refused(make_coco_dir, file_name):
    root = make_coco_dir([("a.png", [{"caption": "a red dress"}])])
    Image.new("RGB", (4, 4)).save(root.parent / "outside.png")  # exists, so only the check stops it
    path = root / "annotations" / "train.json"
    coco = json.loads(path.read_text())
    coco["images"][0]["file_name"] = file_name
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"train\.json, record 1, field 'images\.file_name'") as info:
        load_captions(root)
    assert "escapes" in str(info.value) or "relative" in str(info.value)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda c: c["annotations"][0].pop("caption"), r"record 1, field 'caption': missing or empty"),
        (lambda c: c["annotations"][0].update(caption="  "), r"record 1, field 'caption'"),
        (lambda c: c["annotations"][0].update(image_id=99), r"record 1, field 'image_id'"),
        (lambda c: c["annotations"][0].update(category="dress"), r"record 1, field 'category'"),
        (lambda c: c["annotations"][0].update(attributes="red"), r"record 1, field 'attributes'"),
        (
            lambda c: c["annotations"].append(dict(c["annotations"][0])),
            r"record 1, field 'annotations\.id': duplicate",
        ),
        (lambda c: c["images"].append(dict(c["images"][0])), r"record 1, field 'images\.id': duplicate"),
        (
            lambda c: c["images"][0].update(file_name="missing.png"),
            r"record 1, field 'images\.file_name': image file not",
        ),
        (lambda c: c.pop("images"), r"field 'images': missing"),
    ],
)
def test_errors_name_file_record_and_field(make_coco_dir, edit, pattern):
    root = make_coco_dir([("a.png", [{"caption": "a red dress", "category": 1}])])
    path = root / "annotations" / "train.json"
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    with pytest.raises(
        DataError, match=rf"annotations/train\.json, {pattern}" if "record" in pattern else pattern
    ):
        load_captions(root)


def test_missing_split_and_not_json(make_coco_dir):
    root = make_coco_dir([("a.png", [{"caption": "a red dress"}])])
    with pytest.raises(DataError, match=r"test\.json: no annotation file for split 'test'"):
        load_captions(root, splits=["test"])
    (root / "annotations" / "train.json").write_text("{not json")
    with pytest.raises(DataError, match=r"train\.json: not valid JSON"):
        load_captions(root)


def test_hub_source_gets_default_columns(monkeypatch):
    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"image_id": [1], "image": [None], "caption": ["a hat"], "extra": [0]}
            )
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda source: fake)
    train = load_captions("someone/fashion-set")["train"]
    assert train.column_names == ["image_id", "image", "caption", "attributes", "category"]
    assert train[0]["attributes"] == [] and train[0]["category"] == -1
    with pytest.raises(DataError, match=r"no split\(s\) \['test'\]"):
        load_captions("someone/fashion-set", splits=["test"])


def test_unknown_hub_id_fails_clearly_offline():
    code = "from fashioncap.data import load_captions\nload_captions('nobody-here/no-such-fashion-set')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode != 0
    assert (
        "nobody-here/no-such-fashion-set: not a local data dir, and loading it from the Hugging Face Hub failed"
        in (result.stderr)
    )
