"""Batched generation from pixels, generation settings, and `fashioncap caption` over folders with broken images."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from fashioncap import inference
from fashioncap.cli import main
from fashioncap.inference import generate_captions, generation_settings, iter_image_paths, load_captioner

FAST = ["--num-beams", "1", "--max-new-tokens", "4", "--min-new-tokens", "1"]


@pytest.fixture
def image_folder(tmp_path, synthetic_dir) -> Path:
    """Three good images (one in a subfolder), a zero-byte and a truncated PNG, and a text file to skip."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    sources = sorted((synthetic_dir / "images" / "test").iterdir())
    shutil.copy(sources[0], folder / "a.png")
    shutil.copy(sources[1], folder / "c.png")
    shutil.copy(sources[2], folder / "sub" / "d.png")
    (folder / "b_empty.png").write_bytes(b"")
    (folder / "sub" / "e_truncated.png").write_bytes(sources[3].read_bytes()[:100])
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_generation_settings_come_from_the_run_then_the_flags(tmp_path):
    assert generation_settings(tmp_path) == {"num_beams": 3, "max_new_tokens": 50, "min_new_tokens": 5}
    recipe = {"generation": {"num_beams": 2, "max_new_tokens": 30, "min_new_tokens": 4}}
    (tmp_path / "fashioncap_config.json").write_text(json.dumps(recipe))
    settings = generation_settings(tmp_path, max_new_tokens=7, num_beams=None)
    assert settings == {"num_beams": 2, "max_new_tokens": 7, "min_new_tokens": 4}


def test_generate_captions_is_lazy_batched_and_pixels_only(tiny_model_dir, synthetic_dir, monkeypatch):
    from fashioncap.data.images import open_rgb

    model, processor = load_captioner(str(tiny_model_dir))
    calls, pulled = [], []
    original = inference.caption_pixels

    def recording_generate(model, **kwargs):
        calls.append({k: tuple(v.shape) if hasattr(v, "shape") else v for k, v in kwargs.items()})
        return original(model, **kwargs)

    monkeypatch.setattr(inference, "caption_pixels", recording_generate)

    def images():
        for path in sorted((synthetic_dir / "images" / "test").iterdir())[:5]:
            pulled.append(path)
            yield open_rgb(path)

    captions = generate_captions(model, processor, images(), batch_size=2, num_beams=1, max_new_tokens=4)
    first = next(captions)
    assert len(pulled) == 2, "only the first batch is decoded before the first caption comes out"
    rest = list(captions)
    assert len([first, *rest]) == 5 and all(isinstance(c, str) for c in rest)
    assert [c["pixel_values"][0] for c in calls] == [2, 2, 1]
    assert all(set(c) == {"pixel_values", "num_beams", "max_new_tokens"} for c in calls)


def test_iter_image_paths_walks_folders_in_order_and_leaves_no_file_out(image_folder):
    paths = iter_image_paths([str(image_folder), str(image_folder / "notes.txt")])
    assert iter(paths) is paths  # a generator: nothing is listed before it is needed
    names = [p.relative_to(image_folder).as_posix() for p in paths]
    assert names == [
        "a.png",
        "b_empty.png",
        "c.png",
        "notes.txt",
        "sub/d.png",
        "sub/e_truncated.png",
        "notes.txt",
    ]


def test_caption_cli_reports_broken_images_and_captions_the_rest(tiny_model_dir, image_folder, capsys):
    missing = image_folder / "missing.jpg"
    code = main(
        [
            "caption",
            "--model-dir",
            str(tiny_model_dir),
            str(image_folder),
            str(missing),
            "--batch-size",
            "2",
            *FAST,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1, "some inputs were skipped"
    records = [json.loads(line) for line in out.splitlines()]
    captioned = {Path(r["path"]).name for r in records if "caption" in r}
    failed = {Path(r["path"]).name: r["error"] for r in records if "error" in r}
    assert captioned == {"a.png", "c.png", "d.png"}
    assert set(failed) == {"b_empty.png", "e_truncated.png", "missing.jpg", "notes.txt"}
    assert "zero-byte" in failed["b_empty.png"] and "truncated" in failed["e_truncated.png"]
    assert failed["notes.txt"] == "not an image file"
    assert all(r["caption"].strip() for r in records if "caption" in r)
    for name in failed:
        assert name in err
    assert "3 captioned, 4 skipped (3 unreadable, 1 not an image file)" in err


def test_caption_cli_csv_to_a_file(tiny_model_dir, image_folder, tmp_path):
    out = tmp_path / "out" / "captions.csv"
    code = main(
        ["caption", "--model-dir", str(tiny_model_dir), str(image_folder), "--csv", "--out", str(out), *FAST]
    )
    assert code == 1, "some inputs were skipped"
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["path", "caption", "error"]
    assert sorted(Path(r[0]).name for r in rows[1:] if r[1]) == ["a.png", "c.png", "d.png"]
    skipped = {Path(r[0]).name: r[2] for r in rows[1:] if not r[1]}
    assert skipped == {
        "b_empty.png": "zero-byte file",
        "e_truncated.png": "cannot decode: image file is truncated",
        "notes.txt": "not an image file",
    }
    assert not [p for p in out.parent.iterdir() if p.name != "captions.csv"], "no temporary file left behind"


def test_caption_cli_fails_when_nothing_could_be_captioned(tiny_model_dir, image_folder, capsys):
    broken = [str(image_folder / "b_empty.png"), str(image_folder / "sub" / "e_truncated.png")]
    assert main(["caption", "--model-dir", str(tiny_model_dir), *broken, *FAST]) == 1
    assert "0 captioned, 2 skipped (2 unreadable, 0 not an image file)" in capsys.readouterr().err


def test_caption_from_a_lora_adapter_dir(tiny_model_dir, image_folder, tmp_path, capsys):
    """An adapter run dir (adapter + processor) loads onto its base and captions like any model dir."""
    from transformers import BlipForConditionalGeneration

    from fashioncap.models.blip import DECODER_TARGETS, load_processor
    from fashioncap.models.lora import apply_lora

    base = BlipForConditionalGeneration.from_pretrained(tiny_model_dir)
    adapter_dir = tmp_path / "run"
    apply_lora(base, DECODER_TARGETS, r=2, alpha=4).save_pretrained(adapter_dir)
    load_processor(str(tiny_model_dir)).save_pretrained(adapter_dir)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert main(["caption", "--model-dir", str(adapter_dir), str(image_folder / "a.png"), *FAST]) == 0
    assert json.loads(capsys.readouterr().out)["caption"]


def test_an_adapter_without_a_base_model_is_a_clear_error(tmp_path):
    """An adapter trained on an in-memory tiny model records no base: loading it says so instead of a TypeError."""
    from fashioncap.models.source import ModelLoadError

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None}))
    with pytest.raises(ModelLoadError, match="names no base model.*tiny_model"):
        load_captioner(str(tmp_path))
