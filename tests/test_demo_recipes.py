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
                "--logging_steps", "1", "--per_device_train_batch_size", "16", "--disable_tqdm", "true",
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
    for trial in (1, 2, 3):
        run = tmp_path / f"trial{trial}"
        assert cli(["train", "--config", f"recipes/demo/trial{trial}.yaml", "--data_dir", str(data),
                    "--model_name_or_path", str(base), "--output_dir", str(run), "--max_steps", "2",
                    "--disable_tqdm", "true"]) == 0  # fmt: skip
        assert (run / "adapter_config.json").is_file()


def test_demo_reuses_a_finished_run_only_while_its_inputs_are_unchanged(tmp_path):
    import os

    from fashioncap.configs import load_config
    from fashioncap.demo import _reason_to_train
    from fashioncap.io_utils import write_json_atomic

    config = load_config("recipes/demo/trial1.yaml")
    run, data_report = tmp_path / "trial1", tmp_path / "build_report.json"
    assert _reason_to_train(run, config, [data_report]) == "not trained yet"
    data_report.write_text("{}")
    write_json_atomic(run / "fashioncap_config.json", {**config.to_dict(), "source": "elsewhere/trial1.yaml"})
    write_json_atomic(run / "all_results.json", {})
    os.utime(data_report, ns=(1, 1))
    assert _reason_to_train(run, config, [data_report]) is None
    os.utime(data_report)  # the data was rebuilt after the run finished
    assert "build_report.json changed since" in _reason_to_train(run, config, [data_report])
    os.utime(data_report, ns=(1, 1))
    config.reward.rl_weight = 0.5
    assert _reason_to_train(run, config, [data_report]) == "its recipe changed"
