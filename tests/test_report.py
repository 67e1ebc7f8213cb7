"""`fashioncap report`: the comparison table, the self-contained HTML page, training-curve PNGs, summary.json."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from fashioncap.cli import main
from fashioncap.report import run_names, write_report

SCORES = {"BLEU-1": 0.4, "BLEU-2": 0.3, "BLEU-3": 0.2, "BLEU-4": 0.1234, "METEOR": 0.2, "ROUGE-L": 0.3,
          "CIDEr": 1.25, "SPICE": None, "ALS": 0.5, "SLS": 0.75, "num_images": 8,
          "unavailable": {"SPICE": "no CoreNLP jars"}}  # fmt: skip


def make_run(root: Path, name: str, synthetic_dir: Path, caption: str, rl: bool = True) -> Path:
    """A run dir as `train` + `eval` leave it: trainer_state.json and eval/{predictions,metrics}.json."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    test = json.loads((synthetic_dir / "annotations" / "test.json").read_text())
    predictions = [{"image_id": im["id"], "caption": f"{caption} {im['id']}"} for im in test["images"]]
    (run / "eval" / "predictions.json").write_text(json.dumps(predictions))
    (run / "eval" / "metrics.json").write_text(json.dumps({**SCORES, "CIDEr": 1.25 if rl else 0.5}))
    history = [
        {
            "step": s,
            "loss": 2 / s,
            "loss/mle": 1.5 / s,
            **(
                {"loss/rl": 0.1, "reward/total": s / 10, "reward/als": s / 20, "reward/sls": s / 20}
                if rl
                else {}
            ),
        }  # fmt: skip
        for s in range(1, 6)
    ]
    history.append({"step": 5, "train_runtime": 12.0})  # the final summary row has none of the curves
    (run / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return run


@pytest.fixture
def runs(tmp_path, synthetic_dir) -> dict[str, Path]:
    return {
        "trial2": make_run(tmp_path, "trial2", synthetic_dir, "a red <b>dress</b> & co"),
        "trial1": make_run(tmp_path, "trial1", synthetic_dir, "a blue hat", rl=False),
    }


def _embedded_pngs(html: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(b)))
        for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    ]


def test_report_writes_table_html_plots_and_summary(runs, synthetic_dir, tmp_path):
    out = tmp_path / "report"
    result = write_report(runs, out, data_dir=synthetic_dir, samples=3)

    table = (out / "comparison.md").read_text()
    assert "| run | BLEU-4 | METEOR | ROUGE-L | CIDEr | SPICE | ALS | SLS |" in table
    assert "| trial2 | 0.1234 | 0.2000 | 0.3000 | 1.2500 | n/a | 0.5000 | 0.7500 |" in table
    assert "| trial1 | 0.1234 | 0.2000 | 0.3000 | 0.5000 | n/a |" in table

    html = (out / "report.html").read_text()
    assert 'src="http' not in html and "<link" not in html, "self-contained"
    assert "a red &lt;b&gt;dress&lt;/b&gt; &amp; co" in html and "<b>dress" not in html
    test = json.loads((synthetic_dir / "annotations" / "test.json").read_text())
    assert test["annotations"][0]["caption"] in html, "references beside the captions"
    images = _embedded_pngs(html)
    assert len(images) == 3 + 2, "three samples and one curve figure per run"

    curves = sorted((out / "curves").iterdir())
    assert [p.name for p in curves] == ["trial1.png", "trial2.png"]
    for png in curves:
        assert Image.open(png).format == "PNG"
    assert json.loads((out / "summary.json").read_text()) == {
        "trial2": {**SCORES, "CIDEr": 1.25},
        "trial1": {**SCORES, "CIDEr": 0.5},
    }
    assert result["metrics"]["trial1"]["CIDEr"] == 0.5
    assert sorted(Path(f).name for f in result["files"]) == sorted(
        ["comparison.md", "report.html", "summary.json", "trial1.png", "trial2.png"]
    )


def test_report_cli_without_eval_or_logs(tmp_path, synthetic_dir, capsys):
    """A run that was never evaluated shows n/a and a hint; one without a training log gets no plot."""
    evaluated = make_run(tmp_path / "a", "trial", synthetic_dir, "a dress")
    (evaluated / "trainer_state.json").unlink()
    bare = tmp_path / "b" / "trial"
    bare.mkdir(parents=True)
    code = main(
        ["report", str(evaluated), str(bare), "--out", str(tmp_path / "out"), "--data", str(synthetic_dir)]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    assert "| a/trial | 0.1234 |" in stdout and "| b/trial | n/a | n/a |" in stdout
    assert "fashioncap eval" in stdout
    assert not (tmp_path / "out" / "curves").exists()
    assert "no training log" in (tmp_path / "out" / "report.html").read_text()


def test_run_names_are_unique():
    names = run_names(["outputs/x/trial1", "outputs/y/trial1", "outputs/x/trial2"])
    assert list(names) == ["x/trial1", "y/trial1", "x/trial2"]
    assert list(run_names(["outputs/demo/trial1", "outputs/demo/trial4"])) == ["trial1", "trial4"]
