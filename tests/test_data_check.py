"""`fashioncap data check` and the image decoding it shares with the builders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fashioncap.cli import main
from fashioncap.data.check import check_data_dir
from fashioncap.data.images import ImageProblem, open_rgb, to_rgb


def test_synthetic_dir_is_usable(synthetic_dir, capsys):
    report = check_data_dir(synthetic_dir)
    assert report.ok and not report.problems and report.categories == 12
    assert report.splits["train"] == {
        "annotations": 120,  # five references per image
        "images": 24,
        "bad_records": 0,
        "with_attributes": 120,
        "with_category": 120,
    }
    assert main(["data", "check", str(synthetic_dir)]) == 0
    assert capsys.readouterr().out.strip().endswith("usable")


def test_every_problem_is_named(make_coco_dir, capsys):
    root = make_coco_dir(
        [
            ("good.png", [{"caption": "a red dress", "category": 1}]),
            ("long.png", [{"caption": " ".join(["word"] * 12), "category": 2}]),
            ("zero.png", [{"caption": "a blue dress", "category": 1}]),
            ("corrupt.png", [{"caption": "a hat", "category": 1}]),
            ("gone.png", [{"caption": "a hat", "category": 1}]),
            ("escape.png", [{"caption": "a hat", "category": 1}]),
            ("empty.png", [{"caption": "", "category": 1}]),
            ("unknown.png", [{"caption": "a scarf", "category": 9}]),
        ]
    )
    (root / "images/zero.png").write_bytes(b"")
    (root / "images/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "images/gone.png").unlink()
    coco = json.loads((root / "annotations/train.json").read_text())
    coco["images"][5]["file_name"] = "../../etc/passwd"
    coco["images"].append(dict(coco["images"][0]))  # duplicate image id 1
    (root / "annotations/train.json").write_text(json.dumps(coco))

    report = check_data_dir(root, max_words=10)
    assert not report.ok
    found = {(p.record, p.field, p.severity) for p in report.problems}
    assert (2, "caption", "warning") in found  # too long: usable, but flagged
    assert (3, "images.file_name", "error") in found and (4, "images.file_name", "error") in found
    assert (5, "images.file_name", "error") in found and (6, "images.file_name", "error") in found
    assert (7, "caption", "error") in found and (None, "category", "error") in found
    assert (1, "images.id", "error") in found
    text = report.format()
    for words in (
        "zero-byte",
        "cannot decode",
        "image file not found",
        "escapes",
        "missing or empty caption",
        "category 9",
        "duplicate image id",
        "12 words",
        "NOT usable",
    ):
        assert words in text, words
    assert main(["data", "check", str(root), "--max-words", "10"]) == 1
    out = capsys.readouterr().out
    assert "annotations/train.json, record 6, field 'images.file_name'" in out
    assert main(["data", "check", str(root), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["usable"] is False


def test_missing_categories_is_a_warning_and_missing_dir_an_error(make_coco_dir, tmp_path, capsys):
    root = make_coco_dir([("a.png", [{"caption": "a red dress"}])])
    (root / "categories.json").unlink()
    report = check_data_dir(root)
    assert report.ok and [p.severity for p in report.problems] == ["warning"]
    assert main(["data", "check", str(root)]) == 0
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert verdict.startswith("usable, but") and "SLS metric and the SLS reward" in verdict, (
        "not plain usable"
    )
    assert main(["data", "check", str(root), "--json"]) == 0
    assert "SLS" in json.loads(capsys.readouterr().out)["cannot_run"][0]
    assert not check_data_dir(tmp_path / "nowhere").ok
    assert not check_data_dir(tmp_path).ok  # no annotations


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("CMYK", (4, 4), (0, 0, 0, 255)), (0, 0, 0)),
        (Image.new("L", (4, 4), 77), (77, 77, 77)),
        (Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),
        (Image.new("RGBA", (4, 4), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("RGB", (4, 4), (0, 255, 0)).convert("P"), (0, 255, 0)),
        (Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), (255, 255, 255)),
        (Image.fromarray(np.full((4, 4), 257 * 100, dtype=np.int32)), (100, 100, 100)),
    ],
    ids=["CMYK", "L", "LA", "RGBA", "P", "I;16", "I"],
)
def test_to_rgb(image, expected):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == expected


def test_transparent_palette_goes_over_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30] * 256)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png")
    assert open_rgb(tmp_path / "p.png").getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageProblem, match="decompression"):
        open_rgb(tmp_path / "big.png")
