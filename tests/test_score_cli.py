"""`fashioncap score`: output schema, the data-dir categories default, --out, and errors that name images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fashioncap.cli import main
from fashioncap.metrics import METRIC_NAMES, compute_caption_metrics

RECORDS = Path(__file__).resolve().parent / "data/facad_records.jsonl"
N_IMAGES = 40


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data dir as docs/data.md lays it out: categories.json + annotations/test.json (FACAD captions)."""
    records = [json.loads(line) for line in RECORDS.read_text(encoding="utf-8").splitlines()][:N_IMAGES]
    names = sorted({r["title"].split()[-1] for r in records})
    category = {name: i for i, name in enumerate(names, start=1)}
    root = tmp_path_factory.mktemp("data")
    (root / "annotations").mkdir()
    (root / "categories.json").write_text(json.dumps({str(i): n for n, i in category.items()}))
    annotations = [
        {
            "id": i,
            "image_id": r["id"],
            "caption": r["description"],
            "attributes": r["title"].split()[:-1] if i % 2 else [],
            "category": category[r["title"].split()[-1]],
        }
        for i, r in enumerate(records)
    ]
    annotations.append({"id": len(records), "image_id": records[0]["id"], "caption": records[0]["title"]})
    coco = {
        "info": {},
        "licenses": [],
        "images": [{"id": r["id"], "file_name": f"{r['id']}.jpg"} for r in records],
    }
    (root / "annotations" / "test.json").write_text(json.dumps({**coco, "annotations": annotations}))
    return root


@pytest.fixture(scope="module")
def references(data_dir) -> Path:
    return data_dir / "annotations" / "test.json"


def write_predictions(path: Path, references: Path, drop: int = 0, extra: list | None = None) -> Path:
    annotations = json.loads(references.read_text())["annotations"]
    preds = {a["image_id"]: " ".join(a["caption"].split()[::2]) for a in annotations}
    rows = [{"image_id": k, "caption": c} for k, c in list(preds.items())[drop:]] + (extra or [])
    path.write_text(json.dumps(rows))
    return path


def test_score_prints_the_design_object_and_writes_out(references, data_dir, tmp_path, capsys):
    predictions = write_predictions(tmp_path / "predictions.json", references)
    out = tmp_path / "sub" / "metrics.json"
    assert (
        main(["score", "--references", str(references), "--predictions", str(predictions), "--out", str(out)])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == [*METRIC_NAMES, "ALS", "SLS", "num_images", "unavailable", "ci95"]
    assert printed["num_images"] == N_IMAGES
    assert all(isinstance(printed[m], float) for m in METRIC_NAMES if m != "SPICE")
    assert printed["SPICE"] is None and "SPICE" in printed["unavailable"]
    assert json.loads(out.read_text()) == printed

    # the same numbers as the function API; SLS from ../categories.json, found because REF lies in annotations/
    annotations = json.loads(references.read_text())["annotations"]
    refs, attributes, categories = {}, {}, {}
    for a in annotations:
        refs.setdefault(a["image_id"], []).append(a["caption"])
        if a.get("attributes"):
            attributes[a["image_id"]] = a["attributes"]
        if "category" in a:
            categories[a["image_id"]] = a["category"]
    preds = {p["image_id"]: p["caption"] for p in json.loads(predictions.read_text())}
    wordmap = json.loads((data_dir / "categories.json").read_text())
    assert printed == compute_caption_metrics(preds, refs, attributes, categories, wordmap)


def test_without_categories_json_sls_is_null_with_reason(references, tmp_path, capsys):
    loose = tmp_path / "refs.json"
    loose.write_text(references.read_text())
    predictions = write_predictions(tmp_path / "predictions.json", loose)
    assert main(["score", "--references", str(loose), "--predictions", str(predictions)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["SLS"] is None and "`fashioncap score --categories FILE`" in printed["unavailable"]["SLS"]
    assert "`fashioncap eval --data DIR`" in printed["unavailable"]["SLS"], "a flag eval takes, too"
    assert isinstance(printed["ALS"], float)


def test_unknown_missing_and_duplicate_images_are_errors(references, tmp_path, capsys):
    ids = [a["image_id"] for a in json.loads(references.read_text())["annotations"]]
    extra = [{"image_id": 999_999_999, "caption": "a dress"}, {"image_id": ids[5], "caption": "again"}]
    predictions = write_predictions(tmp_path / "predictions.json", references, drop=3, extra=extra)
    assert main(["score", "--references", str(references), "--predictions", str(predictions)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "999999999" in captured.err and "several predictions for 1 image(s)" in captured.err
    assert f"no prediction for 3 image(s): {ids[0]}, {ids[1]}, {ids[2]}" in captured.err


def test_console_command_exits_nonzero_on_bad_input(references, tmp_path):
    bad = tmp_path / "predictions.json"
    bad.write_text(json.dumps({"image_id": 1, "caption": "not a list"}))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fashioncap.cli",
            "score",
            "--references",
            str(references),
            "--predictions",
            str(bad),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "COCO results format" in proc.stderr and proc.stdout == ""
