"""FACAD builder on real FACAD descriptions: ~50 records with every kind of bad input, and the shared ones."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from fashioncap.data import facad
from fashioncap.data.check import check_data_dir
from fashioncap.data.facad import (
    build_facad,
    category_forms,
    colour_dir,
    detail_info_caption,
    fill_splits,
    group_by_description,
    read_candidates,
    split_sizes,
)
from fashioncap.text import normalize_text

CATEGORY_IDS = {"dress": 1, "tee": 2, "jeans": 3, "sweater": 4, "skirt": 5, "top": 6, "blazer": 7, "gown": 8}
COLOURS = ["Black", "Navy/ White", "Pale Pink", "Red Multi"]
SPLIT = ("train", "val", "test")


def _jpeg(rgb=(200, 40, 40), size=(60, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, "JPEG")
    return buf.getvalue()


def _huge_png() -> bytes:
    """A valid PNG whose header declares 60000 x 60000 pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", 60000, 60000)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(data)


def _odd_mode(mode: str) -> bytes:
    buf = io.BytesIO()
    if mode == "CMYK":
        Image.new("CMYK", (30, 40), (0, 255, 255, 0)).save(buf, "JPEG")  # red
    elif mode == "P":
        Image.new("RGB", (30, 40), (0, 0, 255)).convert("P").save(buf, "PNG")
    elif mode == "LA":
        Image.new("LA", (30, 40), (0, 0)).save(buf, "PNG")  # fully transparent -> white
    else:  # I;16 at 3/4 of full scale
        Image.fromarray(np.full((40, 30), 49151, dtype=np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def _record(rec: dict, colour: str, category: str, **extra) -> dict:
    words = rec["description"].split()
    attr = [w if (len(w) > 5 and i % 3 == 0) else "nah" for i, w in enumerate(words)]
    return {
        "id": rec["id"],
        "images": [{"color": colour, "0": f"https://n.example.com/{rec['id']}.jpeg?crop=pad&w=60&h=90"},
                   {"color": "Other", "0": "https://n.example.com/other.jpeg"}],
        "title": rec["title"],
        "description": rec["description"],
        "detail_info": "DETAILS & CARE\nTrue to size.\n100% cotton.",
        "categoryid": CATEGORY_IDS[category],
        "category": category,
        "attr": attr,
        "attrid": [0 if a == "nah" else 1 for a in attr],
        **extra,
    }  # fmt: skip


@pytest.fixture(scope="module")
def facad_raw(tmp_path_factory, facad_descriptions):
    """52 records and their front images; 36 are good (0-33, 48, 49), the others each carry one problem."""
    root = tmp_path_factory.mktemp("facad_raw")
    images = root / "images"
    pool = [
        r
        for r in facad_descriptions
        if r["title"].split()[-1] in CATEGORY_IDS and len(r["description"].split()) <= 40
    ]
    assert len(pool) >= 50, "the FACAD text sample has too few usable records"
    records, expected_skips = [], {}
    for i, rec in enumerate(pool[:50]):
        colour = COLOURS[i % len(COLOURS)]
        records.append(_record(rec, colour, rec["title"].split()[-1]))
        folder = images / str(rec["id"]) / colour_dir(colour)
        folder.mkdir(parents=True)
        (folder / "0.jpeg").write_bytes(_jpeg((i * 5 % 255, 90, 160)))
    r = records

    def bad(index, field, content=None, **edit):
        if content is not None:
            (
                images / str(r[index]["id"]) / colour_dir(r[index]["images"][0]["color"]) / "0.jpeg"
            ).write_bytes(content)
        r[index].update(edit)
        expected_skips[r[index]["id"]] = field

    # odd modes are converted, not skipped
    for index, mode in zip(range(30, 34), ("CMYK", "P", "LA", "I;16"), strict=True):
        (images / str(r[index]["id"]) / colour_dir(r[index]["images"][0]["color"]) / "0.jpeg").write_bytes(
            _odd_mode(mode)
        )
    r[29]["description"] = ""  # falls back to detail_info
    bad(34, "image", content=b"")  # zero-byte
    bad(35, "image", content=b"\xff\xd8\xff\xe0 definitely not a jpeg" * 20)  # corrupt
    bad(36, "image", content=_jpeg(size=(400, 400))[:600])  # truncated
    bad(37, "image", content=_huge_png())  # decompression bomb
    (images / str(r[38]["id"])).rename(images / "gone")  # missing file
    expected_skips[r[38]["id"]] = "image"
    bad(39, "description", description="", detail_info="")  # empty caption
    bad(40, "description", description=" ".join(["word"] * 60))  # over max_words
    bad(41, "images", images=[])
    bad(42, "categoryid", categoryid=None)
    bad(43, "category", category="")  # unknown category: an id without a name
    bad(44, "category", category="gown", categoryid=CATEGORY_IDS["dress"])  # conflicts with "dress"
    bad(45, "attr", attr="nah nah")
    bad(46, "images.color", images=[{"color": "..", "0": "https://n.example.com/x.jpeg"}])
    records.append(dict(records[0], description="a duplicate of the first record"))  # duplicate id
    records.append({"title": "no id at all", "description": "a record without an id"})
    del r[47]["id"]
    expected_skips.update({"#47": "id", records[0]["id"]: "id", "#51": "id"})  # no id, duplicate, no id
    meta = root / "meta.json"
    meta.write_text(json.dumps(records))
    return {"meta": meta, "images": images, "records": records, "expected_skips": expected_skips}


def _build(facad_raw, out, **kwargs):
    options = dict(train=20, val=4, test=6, image_size=32, workers=2, progress=False)
    return build_facad(facad_raw["meta"], facad_raw["images"], out, **{**options, **kwargs})


def _coco(out, split):
    return json.loads((out / "annotations" / f"{split}.json").read_text())


def test_build_layout_captions_attributes_categories(facad_raw, tmp_path):
    out = _build(facad_raw, tmp_path / "facad")
    report = json.loads((out / "build_report.json").read_text())
    assert report["counts"] == {"train": 20, "val": 4, "test": 6} and report["split_strategy"] == "random"
    by_id = {}
    for rec in facad_raw["records"]:
        if isinstance(rec.get("id"), int):
            by_id.setdefault(rec["id"], rec)  # a duplicate id keeps the first record
    ids = set()
    for split in ("train", "val", "test"):
        coco = _coco(out, split)
        for image, ann in zip(coco["images"], coco["annotations"], strict=True):
            rec = by_id[ann["image_id"]]
            assert image["id"] == ann["image_id"] and image["file_name"] == f"{image['id']}.jpg"
            expected = rec["description"] or "true to size 100 cotton"
            assert ann["caption"] == expected
            assert ann["attributes"] == list(dict.fromkeys(a for a in rec["attr"] if a != "nah"))
            assert ann["category"] == rec["categoryid"]
            with Image.open(out / "images" / image["file_name"]) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) == 32
                assert im.size == (image["width"], image["height"])
                assert im.size in ((21, 32), (24, 32))  # 60x90 and 30x40 fitted into 32x32, aspect kept
            ids.add(ann["image_id"])
    assert len(ids) == 30 and not ids & {r["id"] for r in facad_raw["records"][34:48] if "id" in r}
    categories = json.loads((out / "categories.json").read_text())
    assert categories["1"] == ["dress", "dresses"] and categories["3"] == ["jeans"]


def test_every_bad_record_is_skipped_with_its_reason(facad_raw, tmp_path):
    out = _build(facad_raw, tmp_path / "facad", train=100, val=0, test=0)
    report = json.loads((out / "build_report.json").read_text())
    skipped = {entry["record"]: entry for entry in report["skipped"]}
    assert {k: v["field"] for k, v in skipped.items()} == facad_raw["expected_skips"]
    assert all(entry["reason"] for entry in report["skipped"])
    reasons = " | ".join(entry["reason"] for entry in report["skipped"])
    for words in ("zero-byte", "cannot decode", "decompression", "file not found", "empty caption",
                  "more than max_words", "duplicate id", "unknown category", "'dress' elsewhere"):  # fmt: skip
        assert words in reasons
    assert report["counts"]["train"] == 36  # all good records, odd image modes included


def test_odd_modes_become_correct_rgb(facad_raw, tmp_path):
    out = _build(facad_raw, tmp_path / "facad", train=100, val=0, test=0, split_strategy="order")
    ids = [r["id"] for r in facad_raw["records"][30:34]]
    colours = {}
    for item_id in ids:
        with Image.open(out / "images" / f"{item_id}.jpg") as im:
            colours[item_id] = np.asarray(im).reshape(-1, 3).mean(0)
    cmyk, p, la, i16 = (colours[i] for i in ids)
    assert cmyk[0] > 200 and cmyk[1] < 60  # red
    assert p[2] > 200 and p[0] < 60  # blue
    assert la.min() > 245  # transparent over white
    assert np.allclose(i16, 191, atol=3)  # 49151 / 257 = 191, not clipped to 255


def test_split_is_reproducible_and_strategy_order(facad_raw, tmp_path):
    a = _build(facad_raw, tmp_path / "a", seed=1)
    b = _build(facad_raw, tmp_path / "b", seed=1)
    c = _build(facad_raw, tmp_path / "c", seed=2)
    for split in ("train", "val", "test"):
        assert (a / f"annotations/{split}.json").read_bytes() == (
            b / f"annotations/{split}.json"
        ).read_bytes()
    assert _coco(a, "train")["images"] != _coco(c, "train")["images"]
    ordered = _build(facad_raw, tmp_path / "o", split_strategy="order")
    good_ids = [r["id"] for r in facad_raw["records"][:34]]
    ids = [img["id"] for s in ("train", "val", "test") for img in _coco(ordered, s)["images"]]
    assert ids == good_ids[:30]
    # only what the splits need is examined and kept
    assert len(list((ordered / "images").iterdir())) == 30


def test_fewer_usable_items_than_requested_keeps_proportions(facad_raw, tmp_path):
    out = _build(facad_raw, tmp_path / "f", train=100, val=20, test=40)
    assert json.loads((out / "build_report.json").read_text())["counts"] == {"train": 23, "val": 4, "test": 9}
    assert split_sizes({"train": 10, "val": 1, "test": 2}, 100) == {"train": 10, "val": 1, "test": 2}


def test_json_lines_meta_and_a_broken_line(facad_raw, tmp_path):
    meta = tmp_path / "meta.jsonl"
    lines = [json.dumps(r) for r in facad_raw["records"][:5]]
    meta.write_text("\n".join([lines[0], "{broken", *lines[1:]]) + "\n")
    out = build_facad(
        meta, facad_raw["images"], tmp_path / "j", train=3, val=1, test=1, image_size=32, progress=False
    )
    report = json.loads((out / "build_report.json").read_text())
    assert report["skipped"] == [{"record": "line 2", "field": "record", "reason": "not valid JSON"}]
    assert report["counts"] == {"train": 3, "val": 1, "test": 1}


def test_interrupted_build_leaves_no_output(facad_raw, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = facad.encode_image

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full")
        return original(*args)

    monkeypatch.setattr(facad, "encode_image", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        _build(facad_raw, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_helpers():
    assert colour_dir("Navy/ White") == "Navy_White" and colour_dir("Black") == "Black"
    assert detail_info_caption("DETAILS & CARE\nA Soft, Easy-Fit Tee!") == "a soft easy fit tee"
    assert category_forms({3: "jeans", 1: "dress"}) == {"1": ["dress", "dresses"], "3": ["jeans"]}


def test_fill_splits_never_splits_a_unit():
    units = [["a", "b"], ["c"], ["d", "e", "f"], ["g"], ["h"], ["i", "j"]]
    splits, left_over = fill_splits(units, {"train": 3, "val": 2, "test": 4})
    assert splits == {"train": ["a", "b", "c"], "val": ["g", "h"], "test": ["d", "e", "f"]}
    assert left_over == [["i", "j"]]


@pytest.fixture(scope="module")
def shared_raw(tmp_path_factory, facad_descriptions):
    """The sample's 20 records that share a description (6 groups) and 40 others, with front images."""
    root = tmp_path_factory.mktemp("shared_raw")
    counts = Counter(normalize_text(r["description"]) for r in facad_descriptions)
    shared = [r for r in facad_descriptions if counts[normalize_text(r["description"])] > 1]
    others = [r for r in facad_descriptions if r not in shared and len(r["description"].split()) <= 50][:40]
    records = [_record(rec, "Black", "dress") for rec in shared + others]
    for i, rec in enumerate(records):
        folder = root / "images" / str(rec["id"]) / "Black"
        folder.mkdir(parents=True)
        (folder / "0.jpeg").write_bytes(_jpeg((i * 4 % 255, 90, 160)))
    (root / "meta.json").write_text(json.dumps(records))
    groups = {}
    for rec in shared:
        groups.setdefault(normalize_text(rec["description"]), []).append(rec["id"])
    return {"meta": root / "meta.json", "images": root / "images", "groups": list(groups.values())}


def test_shared_descriptions_in_the_sample(facad_descriptions, tmp_path):
    """The slice holds every shared description of the 3,000-record sample: 20 records in 6 groups, one of 9."""
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps([_record(rec, "Black", "dress") for rec in facad_descriptions]))
    candidates = read_candidates(meta, tmp_path, max_words=200)
    assert len(candidates.items) == len(facad_descriptions) == 400
    units, boilerplate = group_by_description(candidates.items, max_shared=len(candidates.items))
    assert not boilerplate
    assert sorted((len(u) for u in units if len(u) > 1), reverse=True) == [9, 3, 2, 2, 2, 2]
    units, boilerplate = group_by_description(candidates.items, max_shared=3)
    assert [len(group) for group in boilerplate] == [9]
    assert boilerplate[0][0].caption.startswith("this wedding gown can t be purchased online")
    assert len(units) == 400 - 20 + 5


def _split_ids(out) -> dict[int, str]:
    splits = {}
    for split in ("train", "val", "test"):
        ids = [int(line) for line in (out / "splits" / f"{split}.txt").read_text().splitlines()]
        assert ids == [image["id"] for image in _coco(out, split)["images"]]
        splits.update(dict.fromkeys(ids, split))
    return splits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_descriptions_stay_in_one_split_and_boilerplate_is_skipped(shared_raw, tmp_path, seed):
    out = build_facad(shared_raw["meta"], shared_raw["images"], tmp_path / "out", train=30, val=10, test=11,
                      image_size=16, seed=seed, workers=2, progress=False)  # fmt: skip
    report = json.loads((out / "build_report.json").read_text())
    assert report["counts"] == {"train": 30, "val": 10, "test": 11}  # 60 records less the 9 boilerplate ones
    assert report["duplicate_description_groups"] == {"groups": 5, "items": 11}
    assert report["boilerplate_skipped"] == {"groups": 1, "items": 9}
    boilerplate = next(group for group in shared_raw["groups"] if len(group) == 9)
    skipped = {entry["record"]: entry for entry in report["skipped"]}
    assert skipped.keys() == set(boilerplate)
    assert all("max_shared_description=3" in entry["reason"] for entry in skipped.values())
    split_of = _split_ids(out)
    for group in shared_raw["groups"]:
        if group is not boilerplate:
            assert len({split_of[item_id] for item_id in group}) == 1, group


def test_max_shared_description_keeps_a_larger_group_together(shared_raw, tmp_path):
    out = build_facad(shared_raw["meta"], shared_raw["images"], tmp_path / "out", train=40, val=10, test=10,
                      image_size=16, max_shared_description=9, workers=2, progress=False)  # fmt: skip
    report = json.loads((out / "build_report.json").read_text())
    assert report["boilerplate_skipped"] == {"groups": 0, "items": 0} and report["skipped"] == []
    split_of = _split_ids(out)
    for group in shared_raw["groups"]:
        assert len({split_of.get(item_id) for item_id in group}) == 1, group


def test_cli_then_check(facad_raw, tmp_path, capsys):
    from fashioncap.cli import main

    out = tmp_path / "cli"
    argv = [
        "data",
        "facad",
        "--meta",
        str(facad_raw["meta"]),
        "--images",
        str(facad_raw["images"]),
        "--out",
        str(out),
    ]
    assert (
        main(
            [
                *argv,
                "--train",
                "5",
                "--val",
                "2",
                "--test",
                "2",
                "--image-size",
                "24",
                "--workers",
                "2",
                "--max-shared-description",
                "5",
            ]
        )  # fmt: skip
        == 0
    )
    summary = json.loads(capsys.readouterr().out.split("\ndetails")[0])
    assert summary["counts"] == {"train": 5, "val": 2, "test": 2} and summary["skipped"] > 0
    assert summary["max_shared_description"] == 5
    assert main(["data", "check", str(out)]) == 0
    assert "usable" in capsys.readouterr().out


@pytest.fixture(scope="module")
def multiview_raw(tmp_path_factory, facad_descriptions):
    """12 hand-made records whose first colour has 1 to 4 views ("0".."3", as FACAD's meta lists them); the
    second colour's views must never be used, and one listed view (item 3's "2") has no file."""
    root = tmp_path_factory.mktemp("multiview_raw")
    records = []
    for i, rec in enumerate(facad_descriptions[:12]):
        record = _record(rec, "Black", "dress")
        views = 1 + i % 4
        record["images"][0].update(
            {str(v): f"https://n.example.com/{rec['id']}_{v}.jpeg" for v in range(views)}
        )
        record["images"][1].update({"1": "https://n.example.com/other_1.jpeg"})
        for colour, count in (("Black", views), ("Other", 2)):
            folder = root / "images" / str(rec["id"]) / colour
            folder.mkdir(parents=True)
            for v in range(count):
                (folder / f"{v}.jpeg").write_bytes(_jpeg((i * 20 % 255, 40 * v, 160), size=(60 + 10 * v, 90)))
        records.append(record)
    (root / "images" / str(records[3]["id"]) / "Black" / "2.jpeg").unlink()
    (root / "meta.json").write_text(json.dumps(records))
    return {"meta": root / "meta.json", "images": root / "images", "records": records}


def test_all_views_are_training_images_and_val_test_stay_front(multiview_raw, tmp_path):
    out = build_facad(multiview_raw["meta"], multiview_raw["images"], tmp_path / "all", train=6, val=3, test=3,
                      image_size=32, views="all", split_strategy="order", workers=2, progress=False)  # fmt: skip
    report = json.loads((out / "build_report.json").read_text())
    records = {r["id"]: r for r in multiview_raw["records"]}
    views_listed = {i: len([k for k in r["images"][0] if k.isdigit()]) for i, r in records.items()}
    missing = multiview_raw["records"][3]["id"]
    items = {
        split: [int(x) for x in (out / "splits" / f"{split}.txt").read_text().split()] for split in SPLIT
    }
    assert sum(map(len, items.values())) == 12 and len(set().union(*map(set, items.values()))) == 12
    for split in ("val", "test"):
        coco = _coco(out, split)
        assert [im["id"] for im in coco["images"]] == items[split], "one front image per item"
        assert all(im["file_name"] == f"{im['id']}.jpg" for im in coco["images"])
    train = _coco(out, "train")
    stride = 10 ** len(str(max(records)))
    expected_views = {i: views_listed[i] - (i == missing) for i in items["train"]}
    per_item: dict[int, list] = {}
    for image, ann in zip(train["images"], train["annotations"], strict=True):
        item, view = image["id"] % stride, image["id"] // stride
        assert item in items["train"] and ann["image_id"] == image["id"]
        assert image["file_name"] == (f"{item}.jpg" if view == 0 else f"{item}_{view}.jpg")
        assert (
            ann["caption"] == records[item]["description"] and ann["category"] == records[item]["categoryid"]
        )
        with Image.open(out / "images" / image["file_name"]) as im:
            assert im.size == (image["width"], image["height"])
            green = np.asarray(im)[..., 1].mean()
        assert abs(green - 40 * view) < 6, "that view's own file (its green level is 40 x view)"
        per_item.setdefault(item, []).append(view)
    assert {i: len(v) for i, v in per_item.items()} == expected_views
    assert report["views"] == "all" and report["counts"] == {"train": 6, "val": 3, "test": 3}
    assert report["images"] == {"train": sum(expected_views.values()), "val": 3, "test": 3}
    assert report["views_per_item"]["train"] == {
        str(n): c for n, c in sorted(Counter(expected_views.values()).items())
    } and report["views_per_item"]["val"] == {"1": 3}
    assert missing in items["train"] and [(s["record"], s["view"]) for s in report["skipped_views"]] == [
        (missing, 2)
    ]
    assert check_data_dir(out).ok


def test_front_view_is_the_default(multiview_raw, tmp_path):
    out = build_facad(multiview_raw["meta"], multiview_raw["images"], tmp_path / "front", train=6, val=3, test=3,
                      image_size=32, workers=2, progress=False)  # fmt: skip
    report = json.loads((out / "build_report.json").read_text())
    assert report["views"] == "front" and report["images"] == {"train": 6, "val": 3, "test": 3}
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        f"{i}.jpg" for split in SPLIT for i in (out / "splits" / f"{split}.txt").read_text().split()
    )
