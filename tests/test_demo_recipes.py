"""The demo recipes stay runnable: a shortened base + trial 4 through the real CLI, entry point and trainer."""

import json

import pytest

from fashioncap.cli import main as cli
from fashioncap.data import build_synthetic

LOGGED = ("loss/mle", "loss/rl", "reward/als", "reward/sls", "reward/total")


@pytest.fixture(scope="module")
def demo_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    data = build_synthetic(root / "data", train=96, val=8, test=8, pretrain=256)
    base = root / "base"
    assert cli(["train", "--config", "recipes/demo/base.yaml", "--data_dir", str(data), "--output_dir", str(base),
                "--max_steps", "120", "--learning_rate", "2e-3", "--disable_tqdm", "true"]) == 0  # fmt: skip
    return root, data, base


@pytest.mark.slow
def test_demo_trial4_logs_every_part_and_its_reward_rises(demo_base):
    root, data, base = demo_base
    run = root / "trial4"
    assert cli(["train", "--config", "recipes/demo/trial4.yaml", "--data_dir", str(data),
                "--model_name_or_path", str(base), "--output_dir", str(run), "--max_steps", "60",
                "--logging_steps", "1", "--global_batch_size", "16", "--per_device_train_batch_size", "16",
                "--disable_tqdm", "true",
                "--rl_start", "0"]) == 0  # RL from the first step: every log has every part  # fmt: skip
    history = [h for h in json.loads((run / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(history) == 60
    assert all(all(k in h for k in LOGGED) for h in history)
    tenth = len(history) // 10
    first = sum(h["reward/total"] for h in history[:tenth]) / tenth
    last = sum(h["reward/total"] for h in history[-tenth:]) / tenth
    assert last > first, (first, last)
    assert (run / "adapter_model.safetensors").is_file() and (run / "fashioncap_config.json").is_file()


@pytest.mark.slow
def test_every_demo_recipe_loads_and_runs_a_step(demo_base, tmp_path):
    root, data, base = demo_base
    for trial in (
        1,
        2,
        3,
        5,
    ):  # trial 5's second step is RL: its CIDEr-D and ALS-F1 rewards read the training split
        run = tmp_path / f"trial{trial}"
        assert cli(["train", "--config", f"recipes/demo/trial{trial}.yaml", "--data_dir", str(data),
                    "--model_name_or_path", str(base), "--output_dir", str(run), "--max_steps", "2",
                    "--disable_tqdm", "true"]) == 0  # fmt: skip
        assert (run / "adapter_config.json").is_file()


def test_demo_reuses_a_finished_run_only_while_its_inputs_are_unchanged(tmp_path):
    import os

    from fashioncap.configs import load_config
    from fashioncap.demo import reason_to_train
    from fashioncap.io_utils import write_json_atomic

    config = load_config("recipes/demo/trial1.yaml")
    run, data_report = tmp_path / "trial1", tmp_path / "build_report.json"
    assert reason_to_train(run, config, [data_report]) == "not trained yet"
    data_report.write_text("{}")
    write_json_atomic(run / "fashioncap_config.json", {**config.to_dict(), "source": "elsewhere/trial1.yaml"})
    write_json_atomic(run / "all_results.json", {})
    os.utime(data_report, ns=(1, 1))
    assert reason_to_train(run, config, [data_report]) is None
    os.utime(data_report)  # the data was rebuilt after the run finished
    assert "build_report.json changed since" in reason_to_train(run, config, [data_report])
    os.utime(data_report, ns=(1, 1))
    config.training.rl_weight = 0.5
    assert reason_to_train(run, config, [data_report]) == "its recipe changed"


BREVITY = '''
def brevity(completions, caption, image_id, **_):
    """1 when the caption is no longer than its reference: uses two data set columns."""
    assert len(image_id) == len(completions)
    return [float(len(c.split()) <= len(ref.split())) for c, ref in zip(completions, caption)]
'''


@pytest.mark.slow
def test_a_reward_from_outside_the_package_trains_logs_and_is_scored(demo_base, tmp_path, monkeypatch):
    """Issue 11's seam: a reward named by dotted path in a recipe is trained with, logged and scored by eval."""
    root, data, base = demo_base
    package = tmp_path / "site" / "my_rewards"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "length.py").write_text(BREVITY)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    run = tmp_path / "custom"
    assert cli(["train", "--config", "recipes/demo/trial2.yaml", "--data_dir", str(data),
                "--model_name_or_path", str(base), "--output_dir", str(run), "--max_steps", "3",
                "--logging_steps", "1", "--rl_start", "0", "--disable_tqdm", "true",
                "--reward_funcs", "sls", "my_rewards.length.brevity", "--reward_weights", "1", "0.5"]) == 0  # fmt: skip
    history = [h for h in json.loads((run / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert history and all({"reward/sls", "reward/brevity", "reward/total"} <= set(h) for h in history)

    assert cli(["eval", "--model-dir", str(run), "--data", str(data), "--num-beams", "1",
                "--max-new-tokens", "12"]) == 0  # fmt: skip
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    predictions = {
        p["image_id"]: p["caption"]
        for p in json.loads((run / "eval" / "test" / "predictions.json").read_text())
    }
    references = json.loads((data / "annotations" / "test.json").read_text())["annotations"]
    expected = [
        float(len(predictions[a["image_id"]].split()) <= len(a["caption"].split())) for a in references
    ]
    assert metrics["reward/brevity"] == pytest.approx(sum(expected) / len(expected))
    assert "SLS" in metrics and "reward/sls" not in metrics  # ALS/SLS stay the named headline metrics
