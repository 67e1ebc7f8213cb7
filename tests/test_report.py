"""`fashioncap report`: the comparison table, the self-contained HTML page, training-curve PNGs, summary.json."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from fashioncap import rundir
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
    assert "| trial2 | 0.1234 tie | 0.2000 tie | 0.3000 tie | **1.2500** best | n/a |" in table, (
        "bold: a best"
    )
    assert "| trial1 | 0.1234 tie | 0.2000 tie | 0.3000 tie | 0.5000 | n/a |" in table
    assert "- SPICE is n/a for every run: no CoreNLP jars" in table
    assert not any("leads" in line for line in result["verdict"]), (
        "no intervals: no lead is clear of the noise"
    )
    assert "On BLEU-4, METEOR, ROUGE-L, CIDEr, ALS, SLS no run is shown apart" in result["verdict"][0]

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
    assert json.loads((out / "summary.json").read_text())["runs"] == {
        "trial2": {**SCORES, "CIDEr": 1.25, "split": "test"},
        "trial1": {**SCORES, "CIDEr": 0.5, "split": "test"},
    }
    assert result["metrics"]["trial1"]["CIDEr"] == 0.5
    assert sorted(Path(f).name for f in result["files"]) == sorted(
        ["comparison.md", "report.html", "summary.json", "trial1.png", "trial2.png"]
    )


def test_the_tables_show_intervals_mark_the_best_and_ties_and_flag_runs_below_their_base(
    tmp_path, synthetic_dir
):
    """Issue 21: the demo's base had the best SLS (0.895) and nothing said so; SPICE was n/a without a reason."""
    scores = {  # CIDEr: trial3 best, clear of the others; SLS: base best, trial3's interval overlaps it
        "base": {"CIDEr": (1.28, 1.20, 1.36), "SLS": (0.895, 0.85, 0.94)},
        "trial1": {"CIDEr": (3.16, 3.05, 3.27), "SLS": (0.800, 0.76, 0.84)},
        "trial3": {"CIDEr": (3.60, 3.50, 3.70), "SLS": (0.865, 0.82, 0.91)},
    }
    runs = {}
    for name, values in scores.items():
        run = make_run(tmp_path, name, synthetic_dir, "a dress")
        metrics = {**SCORES, **{m: v for m, (v, _, _) in values.items()}}
        metrics["ci95"] = {m: [lo, hi] for m, (_, lo, hi) in values.items()}
        (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
        start = "Salesforce/blip-image-captioning-large" if name == "base" else str(tmp_path / "base")
        (run / "fashioncap_config.json").write_text(json.dumps({"model": {"model_name_or_path": start}}))
        runs[name] = run
    result = write_report(runs, tmp_path / "report", data_dir=synthetic_dir, samples=1)
    rows = {line.split(" | ")[0][2:]: line[:-2].split(" | ") for line in result["table"].splitlines()[2:5]}
    cider, sls = 4, 7  # columns: run, BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE, ALS, SLS
    assert rows["trial3"][cider] == "**3.6000** [3.5000, 3.7000] best"
    assert rows["trial1"][cider] == "3.1600 [3.0500, 3.2700]"
    assert rows["base"][sls] == "0.8950 [0.8500, 0.9400] tie", "a tie is no winner: not bold"
    assert rows["trial3"][sls] == "0.8650 [0.8200, 0.9100] tie, below base"
    assert rows["trial1"][sls] == "0.8000 [0.7600, 0.8400] below base"
    assert "below base: lower than base, the model the other runs were trained from" in result["table"]

    html = (tmp_path / "report" / "report.html").read_text()
    assert (
        '<td class="num">0.8650 <span class="ci">[0.8200, 0.9100]</span> '
        '<span class="mark">tie, below base</span></td>'
    ) in html
    assert result["verdict"] == [
        "trial3 leads on CIDEr: 3.600 vs 3.160 for trial1, their 95% intervals apart.",
        "On BLEU-4, METEOR, ROUGE-L, ALS, SLS no run is shown apart from the others on one seed: run `make study` "
        "(several seeds, paired) before calling a winner.",
    ]
    verdict = html.split("<h2>Verdict</h2>")[1].split("<h2>")[0]
    assert html.index("<h2>Verdict</h2>") < html.index("<h2>Scores") and "trial3 leads on CIDEr" in verdict
    markdown = (tmp_path / "report" / "comparison.md").read_text()
    assert markdown.index("## Verdict") < markdown.index("| run |") and "- trial3 leads on CIDEr" in markdown
    assert "SPICE is n/a for every run: no CoreNLP jars" in html


def test_report_cli_without_eval_or_logs(tmp_path, synthetic_dir, capsys):
    """A run that was never evaluated shows n/a and a hint; one without a training log gets no plot."""
    evaluated = make_run(tmp_path / "a", "trial", synthetic_dir, "a dress")
    (evaluated / "trainer_state.json").unlink()
    bare = tmp_path / "b" / "trial"
    bare.mkdir(parents=True)
    (bare / "fashioncap_config.json").write_text("{}")  # trained, never evaluated
    code = main(
        ["report", str(evaluated), str(bare), "--out", str(tmp_path / "out"), "--data", str(synthetic_dir)]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    assert "| a/trial | 0.1234 |" in stdout and "| b/trial | n/a | n/a |" in stdout, (
        "one run: nothing to mark"
    )
    assert "fashioncap eval" in stdout
    assert not (tmp_path / "out" / "curves").exists()
    assert "no training log" in (tmp_path / "out" / "report.html").read_text()


def test_run_names_are_unique():
    names = run_names(["outputs/x/trial1", "outputs/y/trial1", "outputs/x/trial2"])
    assert list(names) == ["x/trial1", "y/trial1", "x/trial2"]
    assert list(run_names(["outputs/demo/trial1", "outputs/demo/trial4"])) == ["trial1", "trial4"]


def _add_per_image_scores_and_health(
    run: Path, cider: list[float], sls: list[float], collapsed: bool
) -> None:
    """What `eval` adds for paired comparisons and collapse: per_image.json and metrics.json's "health"."""
    ids = [str(i) for i in range(1, len(cider) + 1)]
    (run / "eval" / "per_image.json").write_text(
        json.dumps({"CIDEr": dict(zip(ids, cider, strict=True)), "SLS": dict(zip(ids, sls, strict=True))})
    )
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    health = {"distinct_1": 0.25, "distinct_2": 0.05 if collapsed else 0.5, "vocabulary_size": 40,
              "repeated_trigram_share": 0.9 if collapsed else 0.0, "length_limit_share": None, "mean_length": 11.5,
              "reference_mean_length": 12.25, "top5_share": 0.1, "collapsed": collapsed,
              "template_reuse": not collapsed}  # fmt: skip
    (run / "eval" / "metrics.json").write_text(json.dumps({**metrics, "health": health}))


def test_report_compares_each_rl_trial_with_its_mle_twin_and_shows_health(tmp_path, synthetic_dir, table_row):
    runs = {
        name: make_run(tmp_path, name, synthetic_dir, "a dress") for name in ("trial1", "trial2", "trial3")
    }
    images = 40
    _add_per_image_scores_and_health(runs["trial1"], [1.0 + 0.1 * (i % 5) for i in range(images)],
                                     [float(i % 2) for i in range(images)], collapsed=False)  # fmt: skip
    # trial2: CIDEr 0.5 higher on every image (an interval above 0), SLS the same but on other images (around 0)
    _add_per_image_scores_and_health(runs["trial2"], [1.5 + 0.1 * (i % 5) for i in range(images)],
                                     [float((i + 1) % 2) for i in range(images)], collapsed=True)  # fmt: skip
    out = tmp_path / "report"
    result = write_report(runs, out, data_dir=synthetic_dir, samples=0, compare=[("trial3", "trial1")])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["comparisons"] == result["comparisons"]
    by_metric = {c["metric"]: c for c in summary["comparisons"]}
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == [("trial2", "trial1")] * 2
    assert by_metric["CIDEr"]["delta"] == pytest.approx(0.5) and by_metric["CIDEr"]["ci95"] == pytest.approx(
        [0.5, 0.5]
    )
    assert by_metric["SLS"]["delta"] == 0.0 and by_metric["SLS"]["ci95"][0] < 0 < by_metric["SLS"]["ci95"][1]

    table = (out / "comparison.md").read_text()
    assert "| trial2 - trial1 | CIDEr | +0.5000 | [+0.5000, +0.5000] | yes: trial2 higher |" in table
    assert "| trial2 - trial1 | SLS | +0.0000 | [-0.3000, +0.3000] | no |" in table
    assert "trial3 vs trial1: no per-image scores of trial3 (rerun `fashioncap eval`)" in table
    health = table.split("## Caption health")[1].split("## Paired")[0]
    assert (
        table_row(health, "trial2")["collapsed"] == "yes" and table_row(health, "trial1")["collapsed"] == "no"
    )
    assert table_row(health, "trial1")["template reuse"] == "yes"  # its own column, not a collapse
    assert table_row(health, "trial1")["hit the length limit"] == "n/a" and "trial3" not in health
    html = (out / "report.html").read_text()
    assert "<td>yes: trial2 higher</td>" in html and "<td>top-5 captions&#x27; share</td>" not in html
    assert "<th>top-5 captions&#x27; share</th>" in html and "<td>0.900</td>" in html


def test_per_image_meteor_from_before_its_statistics_is_left_out(tmp_path):
    """Per-caption METEOR scores (an older eval) do not make the corpus METEOR: only its statistics compare."""
    eval_dir = tmp_path / "eval" / "test"
    eval_dir.mkdir(parents=True)
    statistics = [9.0, 9.0, 3.0, 3.0, *[0.0] * 16, 1.0, 9.0, 9.0]
    for meteor, kept in (({"1": 0.5}, False), ({"1": statistics}, True)):
        (eval_dir / "per_image.json").write_text(json.dumps({"CIDEr": {"1": 1.0}, "METEOR": meteor}))
        per_image = rundir.eval_per_image(tmp_path, "test")
        assert per_image["CIDEr"] == {"1": 1.0} and ("METEOR" in per_image) is kept


def test_report_cli_compare_names_runs_it_has(runs, tmp_path, capsys):
    args = ["report", *map(str, runs.values()), "--out", str(tmp_path / "out")]
    assert main([*args, "--compare", "trial2", "trial9"]) == 2
    assert "--compare trial2 trial9: no run named trial9 (runs: trial2, trial1)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([*args, "--compare", "trial1", "trial2"]) == 0
    assert "trial1 vs trial2: no per-image scores of trial1, trial2" in capsys.readouterr().out


def test_a_study_of_these_runs_gives_its_paired_verdicts_instead_of_the_one_seed_ties(
    tmp_path, synthetic_dir
):
    demo = tmp_path / "outputs" / "demo"
    runs = {name: make_run(demo, name, synthetic_dir, "a dress") for name in ("trial3", "trial4")}
    study = {
        "split": "test",
        "runs": {"trial3": {"n_seeds": 5}, "trial4": {"n_seeds": 5}},
        "comparisons": [
            {"a": "trial4", "b": "trial3", "metric": "CIDEr", "delta": 0.1, "ci95": [0.05, 0.15]},
            {"a": "trial4", "b": "trial3", "metric": "SLS", "delta": 0.0, "ci95": [-0.1, 0.1]},
        ],
    }
    (tmp_path / "outputs" / "study").mkdir()
    (tmp_path / "outputs" / "study" / "study.json").write_text(json.dumps(study))
    result = write_report(runs, tmp_path / "report", data_dir=synthetic_dir, samples=0)
    assert (
        "trial4 is above trial3 on CIDEr by +0.100 (over 5 seeds, 95% interval [+0.050, +0.150])."
        in result["verdict"]
    )
    assert any(
        line.startswith("trial4 and trial3 are not apart on SLS over 5 seeds") for line in result["verdict"]
    )
    assert not any("make study" in line for line in result["verdict"])
    assert " tie |" not in result["table"], "the study's verdicts replace the one-seed ties"
    (tmp_path / "outputs" / "study" / "study.json").write_text(json.dumps({**study, "split": "val"}))
    other_split = write_report(runs, tmp_path / "report", data_dir=synthetic_dir, samples=0)
    assert " tie |" in other_split["table"], "a study of another split says nothing about this one"


def test_the_page_separates_each_reference_and_its_rl_tables_fit_a_1200px_window(
    runs, synthetic_dir, tmp_path
):
    import torch

    from fashioncap.completions import completions_table, write_completions

    long = "a long sampled caption with many words about a dress " * 3
    for step in (2, 10):
        rewards = {name: torch.rand(8) for name in ("als", "sls", "cider", "repetition")}
        table = completions_table(
            step, torch.arange(4), ["a reference caption of some length"] * 4, [long] * 8, rewards,
            torch.rand(8), torch.rand(8),
        )  # fmt: skip
        write_completions(runs["trial2"], table)
    write_report(runs, tmp_path / "report", data_dir=synthetic_dir, samples=2)
    page = (tmp_path / "report" / "report.html").read_text()
    test = json.loads((synthetic_dir / "annotations" / "test.json").read_text())
    first = test["images"][0]["id"]
    references = [a["caption"] for a in test["annotations"] if a["image_id"] == first]
    assert len(references) == 5
    listed = "".join(f"<li>{html.escape(r)}</li>" for r in references)
    assert f'<ol class="refs">{listed}</ol>' in page, "each of the five references its own item"
    rl = page.split("<h2>Sampled captions during RL")[1].split("<h2>")[0]
    assert rl.count('<table class="completions">') == 2 and "<td><table" not in rl, (
        "stacked, not side by side"
    )
    assert re.search(r"table\.completions \{[^}]*table-layout: fixed; width: 100%; max-width: 1100px", page)
    chromium = _chromium()
    if chromium is not None:  # measured where a browser is installed (.ci/run installs one)
        browser = chromium(width=1200, height=900)
        try:
            browser.navigate((tmp_path / "report" / "report.html").as_uri())
            widths = browser.wait_for(  # navigate returns before the page has loaded
                "document.readyState === 'complete' && "
                "[...document.querySelectorAll('table.completions')].map(t => t.getBoundingClientRect().right)"
            )
        finally:
            browser.close()
        assert widths and max(widths) <= 1200, widths


def _chromium():
    from headless_chromium import Chromium, find_chromium

    executable = find_chromium()
    return None if executable is None else (lambda **size: Chromium(executable, **size))
