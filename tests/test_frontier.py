"""`fashioncap study --sweep`: the attributes/CIDEr frontier over sweep points and seeds, with the MLE twin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fashioncap import frontier
from fashioncap.cli import main
from fashioncap.demo import RECIPES
from fashioncap.errors import ConfigError
from fashioncap.frontier import parse_sweeps, point_dir, reward_mix_overrides, run_frontier, sweep_points
from fashioncap.study import seed_summary


def test_sweeps_parse_into_points_and_overrides():
    sweeps = parse_sweeps(["rl_weight=0.25,0.5", "--loss_type=grpo, sequence_sum"])
    assert sweeps == {"rl_weight": ["0.25", "0.5"], "loss_type": ["grpo", "sequence_sum"]}
    points = sweep_points(sweeps)
    assert len(points) == 4 and points[1] == {"rl_weight": "0.25", "loss_type": "sequence_sum"}
    assert point_dir(points[1]) == "rl_weight-0.25_loss_type-sequence_sum"
    assert reward_mix_overrides("cider:0.3+als_f1+sls") == [
        "--reward_funcs", "cider", "als_f1", "sls", "--reward_weights", "0.3", "1.0", "1.0",
    ]  # fmt: skip
    assert point_dir({"reward_mix": "cider:0.3+sls"}) == "reward_mix-cider@0.3.sls"
    for bad, message in (("rl_weight", "give KEY=v1,v2"), ("rl_weight=", "give KEY=v1,v2")):
        with pytest.raises(ConfigError, match=message):
            parse_sweeps([bad])
    with pytest.raises(ConfigError, match="given twice"):
        parse_sweeps(["rl_weight=1", "rl_weight=2"])
    with pytest.raises(ConfigError, match="'cider:x' is not name or name:weight"):
        reward_mix_overrides("cider:x+sls")


def _fake_study(calls: list, split: str):
    """A run_study that 'trains' each seed by writing its eval metrics: ALS rises and CIDEr falls with
    rl_weight, seed k adds 0.01 k; the MLE twin (no rl_weight) scores ALS 0.3, CIDEr 1.4."""

    def run_study(out_dir, runs, seeds, split=split, overrides=(), **kwargs):
        calls.append((Path(out_dir), list(runs), list(seeds), list(overrides), kwargs))
        args = list(overrides)
        weight = float(args[args.index("--rl_weight") + 1]) if "--rl_weight" in args else 0.0
        run_dirs = []
        for seed in seeds:
            run_dir = Path(out_dir) / runs[0] / f"seed{seed}"
            eval_dir = run_dir / "eval" / split
            eval_dir.mkdir(parents=True, exist_ok=True)
            metrics = {
                "split": split, "ALS": 0.3 + 0.4 * weight + 0.01 * seed, "CIDEr": 1.4 - weight + 0.01 * seed,
                "reward/als_f1": 0.3 + 0.2 * weight, "health": {"repeated_trigram_share": weight / 2},
            }  # fmt: skip
            (eval_dir / "metrics.json").write_text(json.dumps(metrics))
            run_dirs.append(str(run_dir))
        return {"runs": {runs[0]: {"run_dirs": run_dirs}}}

    return run_study


def test_the_frontier_studies_each_point_and_the_mle_twin_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(frontier, "run_study", _fake_study(calls, "val"))
    result = run_frontier(
        tmp_path, {"rl_weight": ["0.5", "1"]}, ["trial2"], [0, 1, 2], "val", overrides=["--max_steps", "2"]
    )
    assert [(c[0].relative_to(tmp_path).as_posix(), c[1], c[3]) for c in calls] == [
        ("trial2/rl_weight-0.5", ["trial2"], ["--max_steps", "2", "--rl_weight", "0.5"]),
        ("trial2/rl_weight-1", ["trial2"], ["--max_steps", "2", "--rl_weight", "1"]),
        ("trial1", ["trial1"], ["--max_steps", "2"]),
    ]
    assert all(c[2] == [0, 1, 2] for c in calls)
    points = result["points"]
    assert [p["mle_twin"] for p in points] == [False, False, True]
    als = points[1]["figures"]["ALS"]
    assert als == seed_summary([0.7, 0.71, 0.72]) and als["ci95"][0] < 0.71 < als["ci95"][1]
    assert points[0]["figures"]["repeat a trigram"]["mean"] == 0.25
    assert points[2]["figures"]["ALS-F1"]["mean"] == pytest.approx(0.3)
    table = (tmp_path / "frontier.md").read_text()
    assert "| trial1 (MLE twin) | 3 | 0.310 [" in table
    assert "| trial2 rl_weight=1 | 3 | 0.710 [" in table and "| 0.500 [0.500, 0.500] |" in table
    assert json.loads((tmp_path / "frontier.json").read_text()) == result
    with Image.open(tmp_path / "frontier.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 300


def test_sweeps_into_one_out_add_their_points_and_a_point_measured_again_replaces_its_earlier_self(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(frontier, "run_study", _fake_study([], "val"))
    run_frontier(tmp_path, {"rl_weight": ["0.5", "1"]}, ["trial2"], [0, 1, 2], "val")
    result = run_frontier(
        tmp_path, {"reward_mix": ["als+sls"], "rl_weight": ["1"]}, ["trial2"], [0, 1, 2], "val"
    )
    names = [frontier._name(p) for p in result["points"]]
    assert names == ["trial2 rl_weight=0.5", "trial2 rl_weight=1", "trial2 reward_mix=als+sls rl_weight=1",
                     "trial1 (MLE twin)"]  # fmt: skip
    assert json.loads((tmp_path / "frontier.json").read_text()) == result
    assert "| trial2 rl_weight=0.5 | 3 |" in (tmp_path / "frontier.md").read_text()
    with pytest.raises(ConfigError, match=r"holds a frontier of the val split, not test: give another --out"):
        run_frontier(tmp_path, {"rl_weight": ["2"]}, ["trial2"], [0, 1, 2], "test")


def test_the_sweep_command_defaults_to_trial2_on_val_over_3_seeds(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(frontier, "run_study", _fake_study(calls, "val"))
    out = tmp_path / "f"
    assert main(["study", "--sweep", "loss_type=grpo", "--out", str(out), "--max_steps", "2"]) == 0
    assert [(c[1], c[2], c[3]) for c in calls] == [
        (["trial2"], [0, 1, 2], ["--max_steps", "2", "--loss_type", "grpo"]),
        (["trial1"], [0, 1, 2], ["--max_steps", "2"]),
    ]
    assert "| trial2 loss_type=grpo | 3 |" in capsys.readouterr().out
    assert main(["study", "--sweep", "rl_weight=1", "--seeds", "2", "--out", str(out)]) == 2
    assert "--sweep needs at least 3 seeds per point for an interval, not 2" in capsys.readouterr().err


def test_a_family_sweep_studies_that_familys_trials(tmp_path, monkeypatch):
    """`--family florence2 --sweep` draws the Florence-2 demo's frontier: its recipes, its default OUT, its name
    (the study's time estimates are the family's)."""
    calls = []
    monkeypatch.setattr(frontier, "run_study", _fake_study(calls, "val"))
    monkeypatch.chdir(tmp_path)
    assert main(["study", "--family", "florence2", "--sweep", "rl_weight=1"]) == 0
    assert {c[0].parts[:2] for c in calls} == {("outputs", "study-florence2")}
    assert {c[4]["family_name"] for c in calls} == {"florence2"}
    assert {c[4]["recipes"] for c in calls} == {RECIPES / "florence2"}


@pytest.mark.slow
def test_a_sweep_trains_each_seed_of_each_point_and_the_twin_on_the_tiny_model(
    tiny_model_dir, synthetic_dir, tmp_path, capsys
):
    out = tmp_path / "frontier"
    tiny = ["--max_steps", "2", "--global_batch_size", "4", "--per_device_train_batch_size", "4",
            "--num_beams", "1", "--max_new_tokens", "6", "--dataloader_num_workers", "0", "--disable_tqdm",
            "true", "--logging_steps", "1", "--rl_start", "0", "--num_samples", "2"]  # fmt: skip
    assert main(["study", "--sweep", "loss_type=grpo", "--out", str(out), "--base", str(tiny_model_dir),
                 "--data_dir", str(synthetic_dir), "--split", "test", *tiny]) == 0  # fmt: skip
    for trial, run in (("trial2", out / "trial2" / "loss_type-grpo"), ("trial1", out / "trial1")):
        configs = [
            json.loads((run / trial / f"seed{k}" / "fashioncap_config.json").read_text()) for k in range(3)
        ]
        assert [c["training"]["seed"] for c in configs] == [0, 1, 2]
    rl_config = json.loads((out / "trial2/loss_type-grpo/trial2/seed0/fashioncap_config.json").read_text())
    assert rl_config["reward"]["loss_type"] == "grpo"
    history = json.loads((out / "trial2/loss_type-grpo/trial2/seed1/trainer_state.json").read_text())[
        "log_history"
    ]
    assert any("health/greedy_repeated_trigram_share" in row for row in history), (
        "the guard's figures are logged"
    )
    result = json.loads((out / "frontier.json").read_text())
    assert [(p["trial"], p["mle_twin"]) for p in result["points"]] == [("trial2", False), ("trial1", True)]
    for point in result["points"]:
        assert {"ALS", "ALS-F1", "CIDEr", "repeat a trigram"} <= set(point["figures"])
        assert len(point["figures"]["CIDEr"]["values"]) == 3 and point["figures"]["CIDEr"]["ci95"] is not None
    printed = capsys.readouterr().out
    assert "| trial2 loss_type=grpo | 3 |" in printed and "| trial1 (MLE twin) | 3 |" in printed
    with Image.open(out / "frontier.png") as plot:
        assert plot.format == "PNG"
