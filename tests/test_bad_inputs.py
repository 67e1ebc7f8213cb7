"""Bad inputs of issue 7 not already covered elsewhere, each through the path a user takes (README.md, "Reliability"
lists the others and the tests that cover them): what happens is asserted, and it is never a made-up result.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

from fashioncap.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--num-beams", "1", "--max-new-tokens", "4", "--min-new-tokens", "1"]


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1x1 PNG whose header declares width x height pixels (a decompression bomb, 100 bytes on disk)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from fashioncap.models.blip import build_tiny

    model, processor = build_tiny("a red blue dress boots with sleeve".split())
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# --- recipes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "named"),
    [("lora_rank: 16", "lora_rank"), ("lora_r: sixteen", "bad value for lora_r")],
    ids=["unknown key", "wrong type"],
)
def test_bad_recipe_through_the_train_command_names_the_key_and_trains_nothing(tmp_path, line, named):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"tiny_model: true\noutput_dir: {tmp_path / 'out'}\n{line}\n")
    result = subprocess.run(
        [sys.executable, "-m", "fashioncap.cli", "train", "--config", str(recipe)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0 and named in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


# --- annotation and category files -------------------------------------------------------------------------------


def test_truncated_annotation_json_is_a_clear_error_in_eval_and_check(
    make_coco_dir, tiny_model_dir, tmp_path, capsys
):
    root = make_coco_dir([("a.png", [{"caption": "a red dress", "category": 1}])], split="test")
    (root / "annotations" / "test.json").write_text('{"images": [{"id": 1, "file_na')
    out = tmp_path / "eval"
    assert (
        main(["eval", "--model-dir", str(tiny_model_dir), "--data", str(root), "--out-dir", str(out), *FAST])
        == 2
    )
    err = capsys.readouterr().err
    assert "annotations/test.json: not valid JSON" in err and not out.exists()
    (root / "categories.json").write_text("{not json")
    assert main(["data", "check", str(root)]) == 1
    report = capsys.readouterr().out
    assert "categories.json: not valid JSON" in report and "test.json: not valid JSON" in report


def test_category_ids_missing_from_categories_json_score_zero_and_are_flagged(make_coco_dir):
    """Training and scoring go on (SLS 0 for those items, never a KeyError); `data check` names the ids."""
    from fashioncap.data import load_captions, load_categories
    from fashioncap.data.check import check_data_dir
    from fashioncap.metrics.coco_caption import category_score
    from fashioncap.rewards import sls_reward

    root = make_coco_dir(
        [
            ("a.png", [{"caption": "a red dress", "category": 1}]),
            ("b.png", [{"caption": "a hat", "category": 7}]),
        ],
        categories={"1": "dress"},
    )
    train = load_captions(root)["train"]
    assert train["category"][:] == [1, 7]
    wordmap = load_categories(root)
    assert sls_reward(["a red dress", "a dress, not a hat"], category=[1, 7], category_wordmap=wordmap) == [
        1.0,
        0.0,
    ]
    assert category_score({1: "a red dress", 2: "a hat"}, {1: 1, 2: 7}, wordmap) == 0.5
    problems = [p.reason for p in check_data_dir(root).problems]
    assert problems == ["category 7 (1 annotations) is not in categories.json"]


def test_references_without_attributes_score_zero_with_one_warning():
    """ALS over many images whose references carry no attributes (and no NOUN/ADJ to fall back to): one warning."""
    from fashioncap.metrics.coco_caption import attribute_score

    predictions = {1: "a red dress", 2: "a blue tee", 3: "a red dress"}
    references = {1: ["it is"], 2: ["of the"], 3: ["a red dress"]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score = attribute_score(predictions, references, {1: None, 2: ["nah", ""], 3: ["red"]})
    assert score == pytest.approx(1 / 3)  # images 1 and 2 score 0, image 3 scores 1
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]  # not a GC'd event loop's
    assert said == ["2 of 3 references have no attributes: their ALS is 0"]


# --- the machine -------------------------------------------------------------------------------------------------


def test_without_java_score_fails_with_the_install_command_and_prints_no_numbers(tmp_path):
    """The PTB tokenizer every COCO metric needs runs on Java: no Java, no scores (not zeros, not nulls)."""
    refs = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "a dress"}],
    }
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    (tmp_path / "preds.json").write_text(json.dumps([{"image_id": 1, "caption": "a dress"}]))
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "fashioncap.cli", "score", "--references", str(tmp_path / "refs.json"),
         "--predictions", str(tmp_path / "preds.json")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": str(empty_path)},
    )  # fmt: skip
    assert result.returncode != 0 and result.stdout == ""
    assert (
        "Java (17+) is needed" in result.stderr
        and "apt-get install -y openjdk-17-jre-headless" in result.stderr
    )


# --- images ------------------------------------------------------------------------------------------------------


def test_caption_skips_a_decompression_bomb_and_a_missing_file_and_captions_the_rest(
    tiny_model_dir, tmp_path, capsys
):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "a_good.png")
    (folder / "b_bomb.png").write_bytes(bomb_png())
    Image.new("RGB", (32, 32), (30, 30, 200)).save(folder / "c_good.png")
    missing = tmp_path / "missing.png"
    assert main(["caption", "--model-dir", str(tiny_model_dir), str(folder), str(missing), *FAST]) == 1
    out, err = capsys.readouterr()
    records = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert set(records) == {"a_good.png", "b_bomb.png", "c_good.png", "missing.png"}
    assert "caption" in records["a_good.png"] and "caption" in records["c_good.png"]
    assert records["b_bomb.png"]["error"].startswith("decompression bomb: Image size (400000000 pixels)")
    assert records["missing.png"]["error"] == "file not found"
    assert "2 captioned, 2 skipped (2 unreadable, 0 not an image file)" in err


def test_a_decompression_bomb_in_a_data_dir_fails_at_read_time_and_check_names_it(make_coco_dir):
    """The loader checks that images exist, not that they decode: training would stop at the bomb with PIL's
    error, so `fashioncap data check` (which decodes every image) is the place that names it beforehand."""
    from fashioncap.data import load_captions
    from fashioncap.data.check import check_data_dir

    root = make_coco_dir([("a.png", [{"caption": "a red dress"}]), ("bomb.png", [{"caption": "a hat"}])])
    (root / "images" / "bomb.png").write_bytes(bomb_png())
    train = load_captions(root)["train"]
    assert train[0]["image"].size == (8, 6)
    with pytest.raises(Image.DecompressionBombError):
        train[1]["image"]
    reasons = [p.reason for p in check_data_dir(root).problems]
    assert len(reasons) == 1 and reasons[0].startswith(
        "bomb.png: decompression bomb: Image size (400000000 pixels)"
    )
