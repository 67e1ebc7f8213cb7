"""`fashioncap study`: demo trials retrained over seeds, intervals per trial, paired differences, resuming."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from fashioncap import demo, study
from fashioncap.cli import main
from fashioncap.errors import ConfigError
from fashioncap.metrics.bootstrap import corpus_bleu
from fashioncap.study import paired_seed_differences, seed_summary, student_t_quantile

TINY = ["--max_steps", "2", "--global_batch_size", "4", "--per_device_train_batch_size", "4", "--num_beams", "1",
        "--max_new_tokens", "6", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
        "--logging_steps", "1"]  # fmt: skip


def test_seed_summary_is_the_mean_the_sample_std_and_a_t_interval():
    summary = seed_summary([1.0, 2.0, 3.0])
    half = 4.302653 / 3**0.5  # t(0.975, 2) * std / sqrt(n)
    assert summary["mean"] == 2.0 and summary["std"] == 1.0 and summary["values"] == [1.0, 2.0, 3.0]
    assert summary["ci95"] == pytest.approx([2.0 - half, 2.0 + half], abs=1e-5)
    assert seed_summary([0.5]) == {"mean": 0.5, "std": None, "ci95": None, "values": [0.5]}
    assert student_t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-5)


def test_paired_differences_over_seeds_and_images():
    images = [str(i) for i in range(30)]
    b = [{i: float(int(i) % 3) for i in images} for _ in range(3)]
    shifted = [
        {i: v + shift for i, v in seed.items()} for seed, shift in zip(b, (0.1, 0.2, 0.3), strict=True)
    ]
    result = paired_seed_differences(shifted, b)
    assert result["per_seed"] == pytest.approx([0.1, 0.2, 0.3]) and result["delta"] == pytest.approx(0.2)
    half = 4.302653 * 0.1 / 3**0.5  # the headline: t(0.975, 2) * std / sqrt(n) over the per-seed differences
    assert result["std"] == pytest.approx(0.1) and result["ci95"] == pytest.approx([0.2 - half, 0.2 + half])
    assert result["ci95_images"] == pytest.approx([0.2, 0.2])  # every image moved alike: no image noise
    # with image noise and no shift, the image interval straddles 0
    noisy = [{i: v + (0.5 if int(i) % 2 else -0.5) for i, v in seed.items()} for seed in b]
    lo, hi = paired_seed_differences(noisy, b)["ci95_images"]
    assert lo < 0 < hi
    # corpus statistics (BLEU-4 from summed per-image stats) pair the same way; one seed has no t-interval
    stats = {i: [10, 10, 10, 9, 8, 7, 8, 6, 4, 2] for i in images}
    same = paired_seed_differences([stats], [stats], corpus_bleu)
    assert same["ci95"] is None and same["ci95_images"] == [0.0, 0.0] and same["delta"] == 0.0
    with pytest.raises(ValueError, match="seed 1: the runs scored other images"):
        paired_seed_differences([b[0], {"x": 1.0}], b[:2])


def test_paired_interval_misses_near_5_percent_under_the_null():
    """400 simulated 5-seed studies of two runs with no true difference, a seed effect per run and seed, and
    per-image noise: the headline 95% interval excludes 0 in about 5% of them (binomial sd 1.1%)."""
    rng = np.random.default_rng(0)
    images, seeds, studies = 20, 5, 400
    image_effect = rng.normal(size=images)
    misses = 0
    for _ in range(studies):
        runs = [
            [
                dict(enumerate(image_effect + rng.normal() + rng.normal(scale=0.3, size=images)))
                for _ in range(seeds)
            ]
            for _ in range(2)
        ]
        lo, hi = paired_seed_differences(*runs, n=200)["ci95"]
        misses += lo > 0 or hi < 0
    assert 0.025 <= misses / studies <= 0.08


def test_study_trains_each_seed_evaluates_compares_and_resumes(
    tiny_model_dir, synthetic_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "study"
    options = ["--seeds", "2", "--runs", "trial1", "trial5", "--compare", "trial5", "trial1"]
    paths = ["--out", str(out), "--base", str(tiny_model_dir), "--data_dir", str(synthetic_dir)]
    assert main(["study", *options, *paths, *TINY]) == 0
    assert "| trial5 - trial1 | CIDEr |" in capsys.readouterr().out

    result = json.loads((out / "study.json").read_text())
    assert list(result["runs"]) == ["trial1", "trial5"] and result["num_images"] == 8
    for trial in ("trial1", "trial5"):
        run = result["runs"][trial]
        assert run["n_seeds"] == 2 and run["seeds"] == [0, 1]
        configs = [
            json.loads((out / trial / f"seed{k}" / "fashioncap_config.json").read_text()) for k in (0, 1)
        ]
        assert [c["training"]["seed"] for c in configs] == [0, 1]
        adapters = [(out / trial / f"seed{k}" / "adapter_model.safetensors").read_bytes() for k in (0, 1)]
        assert adapters[0] != adapters[1], "another seed, another run"
        cider = run["metrics"]["CIDEr"]
        assert len(cider["values"]) == 2 and cider["ci95"][0] <= cider["mean"] <= cider["ci95"][1]
        assert cider["std"] == pytest.approx(abs(cider["values"][0] - cider["values"][1]) / 2**0.5)
        assert "SPICE" not in run["metrics"], "a metric that could not run has no summary"
    # trial 5 trained with its CIDEr-D and ALS-F1 rewards (its second step is RL) and eval scored them
    history = json.loads((out / "trial5" / "seed0" / "trainer_state.json").read_text())["log_history"]
    assert any({"reward/cider", "reward/als_f1", "reward/sls"} <= set(row) for row in history)
    metrics = json.loads((out / "trial5" / "seed0" / "eval" / "test" / "metrics.json").read_text())
    assert metrics["reward/cider"] >= 0 and 0 <= metrics["reward/als_f1"] <= 1 and "health" in metrics
    # the MLE twin scores the RL trial's rewards too, on the same images
    mle = json.loads((out / "trial1" / "seed0" / "eval" / "test" / "metrics.json").read_text())
    assert {"reward/cider", "reward/als_f1", "reward/repetition"} <= set(mle)
    comparisons = {c["metric"]: c for c in result["comparisons"]}
    assert {c["a"] for c in result["comparisons"]} == {"trial5"} and {"CIDEr", "ALS", "SLS"} <= set(
        comparisons
    )
    cider = comparisons["CIDEr"]  # pycocoevalcap's CIDEr is the mean of the per-image scores
    a, b = (
        result["runs"]["trial5"]["metrics"]["CIDEr"]["values"],
        result["runs"]["trial1"]["metrics"]["CIDEr"]["values"],
    )
    assert cider["per_seed"] == pytest.approx([a[0] - b[0], a[1] - b[1]])
    assert cider["delta"] == pytest.approx((a[0] - b[0] + a[1] - b[1]) / 2)
    assert (
        cider["ci95"] == pytest.approx(seed_summary(cider["per_seed"])["ci95"])
        and len(cider["ci95_images"]) == 2
    )
    table = (out / "study.md").read_text()
    assert "| trial1 | 2 |" in table and "| trial5 - trial1 | SLS |" in table
    with Image.open(out / "study.png") as plot:
        assert plot.format == "PNG"

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished seed run was trained or evaluated again")

    monkeypatch.setattr(demo, "train", must_not_run)
    monkeypatch.setattr(study, "evaluate_run", must_not_run)
    overrides = ["--data_dir", str(synthetic_dir), *TINY]
    again = study.run_study(
        out,
        ["trial1", "trial5"],
        [0, 1],
        base=tiny_model_dir,
        overrides=overrides,
        compare=[("trial5", "trial1")],
    )
    assert again == result


def test_an_identical_finished_run_elsewhere_is_reused_and_any_difference_is_not(tmp_path):
    from fashioncap.configs import load_config
    from fashioncap.io_utils import write_json_atomic

    demo_run, data = tmp_path / "demo" / "trial1", tmp_path / "data"
    data.mkdir()
    (data / "build_report.json").write_text("{}")
    args = ["--data_dir", str(data), "--seed", "0"]
    finished = load_config("recipes/demo/trial1.yaml", [*args, "--output_dir", str(demo_run)])
    write_json_atomic(demo_run / "fashioncap_config.json", finished.to_dict())
    write_json_atomic(demo_run / "all_results.json", {})
    seed_run = tmp_path / "study" / "trial1" / "seed0"
    wanted = load_config("recipes/demo/trial1.yaml", [*args, "--output_dir", str(seed_run)])
    assert demo.identical_finished_run(wanted, [seed_run, demo_run], str(data)) == demo_run
    other_seed = load_config(
        "recipes/demo/trial1.yaml", [*args, "--seed", "1", "--output_dir", str(seed_run)]
    )
    assert demo.identical_finished_run(other_seed, [seed_run, demo_run], str(data)) is None
    (data / "build_report.json").write_text("{}")  # the data rebuilt after the run finished
    os.utime(demo_run / "all_results.json", ns=(1, 1))
    assert demo.identical_finished_run(wanted, [seed_run, demo_run], str(data)) is None


def test_study_counts_its_runs_and_reuses_the_demo_run_of_the_same_trial_and_seed(
    tiny_model_dir, synthetic_dir, tmp_path, capsys, monkeypatch
):
    """Issue 21: the demo's seed-0 trials were trained again by the study, identical to the last bit."""
    monkeypatch.chdir(tmp_path)  # the demo recipe's own output_dir, outputs/demo/trial1, lies here
    common = ["--model_name_or_path", str(tiny_model_dir), "--data_dir", str(synthetic_dir), *TINY]
    assert main(["train", "--config", str(demo.RECIPES / "trial1.yaml"), "--seed", "0", *common]) == 0
    demo_run = tmp_path / "outputs" / "demo" / "trial1"
    adapter = (demo_run / "adapter_model.safetensors").read_bytes()
    trained = []
    monkeypatch.setattr(demo, "train", lambda config: trained.append(config.training.seed))
    monkeypatch.setattr(study, "evaluate_run", lambda *args, **kwargs: None)
    monkeypatch.setattr(study, "_eval_is_current", lambda run_dir, split, data_dir: True)
    monkeypatch.setattr(study, "summarize", lambda results, pairs, split: results)
    monkeypatch.setattr(study, "write_study", lambda *args: None)
    monkeypatch.setattr(study.rundir, "eval_metrics", lambda *args: None)
    results = study.run_study("out", ["trial1"], [0, 1], base=tiny_model_dir, overrides=common[2:])
    assert [r["run_dir"] for r in results["trial1"]] == ["outputs/demo/trial1", "out/trial1/seed1"]
    assert trained == [1], "seed 1 trained, seed 0 reused"
    assert (demo_run / "adapter_model.safetensors").read_bytes() == adapter
    out = capsys.readouterr().out
    assert "== run 1 of 2: trial1 seed 0 (about 47 s on an idle 2-core machine) ==" in out
    assert "== run 2 of 2: trial1 seed 1 (about 47 s on an idle 2-core machine; " in out
    assert "reusing the finished run in outputs/demo/trial1: the same recipe, data, base and seed" in out


def test_an_eval_with_per_caption_meteor_is_evaluated_again(tmp_path):
    """A resumed study re-evaluates a seed run whose eval kept per-caption METEOR scores (before METEOR's
    per-image statistics), else its METEOR comparisons would silently vanish."""
    run_dir = tmp_path / "trial1" / "seed0"
    eval_dir = run_dir / "eval" / "test"
    eval_dir.mkdir(parents=True)
    (run_dir / "all_results.json").write_text("{}")
    os.utime(run_dir / "all_results.json", ns=(10**9, 10**9))  # trained long before the eval
    statistics = [9.0, 9.0, 3.0, 3.0, *[0.0] * 16, 1.0, 9.0, 9.0]
    for meteor, current in (({"1": 0.5}, False), ({"1": statistics}, True)):
        (eval_dir / "per_image.json").write_text(json.dumps({"CIDEr": {"1": 1.0}, "METEOR": meteor}))
        metrics = {"METEOR": 0.5, "CIDEr": 1.0, "split": "test", "data_dir": str(tmp_path / "data")}
        (eval_dir / "metrics.json").write_text(json.dumps(metrics))
        assert study._eval_is_current(run_dir, "test", tmp_path / "data") is current


def test_an_eval_of_another_data_dir_is_not_reused(tmp_path):
    """Issue 26: a seed run's eval is reused only when it scored the study's data dir: other data sets number
    their images 1..N too, so matching image ids say nothing."""
    run_dir = tmp_path / "trial1" / "seed0"
    eval_dir = run_dir / "eval" / "test"
    eval_dir.mkdir(parents=True)
    (run_dir / "all_results.json").write_text("{}")
    os.utime(run_dir / "all_results.json", ns=(10**9, 10**9))  # trained long before the eval
    (eval_dir / "per_image.json").write_text(json.dumps({"CIDEr": {"1": 1.0}}))
    metrics = {"CIDEr": 1.0, "METEOR": None, "split": "test", "data_dir": str(tmp_path / "data")}
    (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    assert study._eval_is_current(run_dir, "test", tmp_path / "data")
    assert study._eval_is_current(run_dir, "test", tmp_path / "." / "data"), "the same dir, spelt another way"
    assert not study._eval_is_current(run_dir, "test", tmp_path / "other")


def test_pairs_are_matched_by_seed_not_by_position():
    """Issue 26: trial b's seed runs listed in another order are paired seed with seed; different seeds are an
    error naming both trials."""

    def seed_run(seed: int, score: float) -> dict:
        return {"seed": seed, "run_dir": f"s{seed}", "metrics": {"CIDEr": score, "num_images": 2},
                "per_image": {"CIDEr": {1: score, 2: score}}}  # fmt: skip

    a = [seed_run(0, 1.0), seed_run(1, 2.0), seed_run(2, 4.0)]
    b = [seed_run(0, 0.5), seed_run(1, 1.5), seed_run(2, 3.5)]  # b = a - 0.5 at every seed
    in_order = study.summarize({"a": a, "b": b}, [("a", "b")])["comparisons"]
    shuffled = study.summarize({"a": a, "b": [b[2], b[0], b[1]]}, [("a", "b")])["comparisons"]
    assert [c["per_seed"] for c in shuffled] == [c["per_seed"] for c in in_order] == [[0.5, 0.5, 0.5]]
    with pytest.raises(ConfigError, match=r"cannot pair a \(seeds 0, 1, 2\) with b \(seeds 0, 1, 3\)"):
        study.summarize({"a": a, "b": [*b[:2], seed_run(3, 0.0)]}, [("a", "b")])


def test_study_names_unknown_trials_and_bad_seed_counts(tmp_path, capsys):
    assert main(["study", "--runs", "trial1", "trial9", "--out", str(tmp_path / "s")]) == 2
    assert "no recipe for trial9 in" in capsys.readouterr().err
    for bad in ("0", "x", "3-1", "1,1", "-2"):
        with pytest.raises(SystemExit) as exited:  # argparse's own exit: the usage line, then the error
            main(["study", "--seeds", bad, "--out", str(tmp_path / "s")])
        assert exited.value.code == 2 and "argument --seeds" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_seeds_are_a_count_a_range_or_a_list():
    from fashioncap.commands.study import seed_list

    assert seed_list("5") == [0, 1, 2, 3, 4]
    assert seed_list("5-9") == [5, 6, 7, 8, 9]
    assert seed_list("0,3,7") == [0, 3, 7]
    assert study.seed_label([5, 6, 7]) == "5-7" and study.seed_label([0, 3, 7]) == "0, 3, 7"


def test_a_trial_is_a_demo_recipe_name_or_a_recipe_file(tmp_path):
    from fashioncap.demo import RECIPES
    from fashioncap.errors import ConfigError

    outside = tmp_path / "trial6.yaml"
    outside.write_text((RECIPES / "trial2.yaml").read_text())
    found = study.find_trial_recipes(["trial1", str(outside)], RECIPES)
    assert found == {"trial1": RECIPES / "trial1.yaml", "trial6": outside}
    with pytest.raises(ConfigError, match=r"no recipe for trial9, trial7 \(.*trial7.yaml\) in "):
        study.find_trial_recipes(["trial9", str(tmp_path / "trial7.yaml")], RECIPES)
    with pytest.raises(
        ConfigError, match=r"--runs names two trials 'trial2': .*trial2.yaml and .*trial2.yaml"
    ):
        study.find_trial_recipes(["trial2", str(outside.with_name("trial2.yaml"))], RECIPES)
