"""RL as a continuation: `init_from_run` starts a run from a finished run's adapter, or refuses one that cannot fit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from fashioncap.cli import main
from fashioncap.configs import load_config
from fashioncap.data import load_captions
from fashioncap.errors import ConfigError
from fashioncap.models.source import ModelLoadError
from fashioncap.train import build_model

TRIAL1 = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "trial1.yaml"
TINY = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--dataloader_num_workers", "0",
        "--disable_tqdm", "true", "--do_predict", "false"]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, synthetic_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("mle") / "trial1"
    paths = ["--model_name_or_path", str(tiny_model_dir), "--data_dir", str(synthetic_dir)]
    assert main(["train", "--config", str(TRIAL1), *paths, *TINY, "--output_dir", str(run)]) == 0
    return run


def _model(tiny_model_dir, synthetic_dir, *overrides):
    config = load_config(
        TRIAL1, ["--model_name_or_path", str(tiny_model_dir), "--data_dir", str(synthetic_dir), *overrides]
    )
    return build_model(config, load_captions(synthetic_dir))[0]


def test_a_continuation_starts_from_the_runs_adapter(finished_run, tiny_model_dir, synthetic_dir):
    stored = json.loads((finished_run / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert stored == os.path.relpath(tiny_model_dir, finished_run), (
        "train stores a local base relative to the run"
    )
    saved = load_file(finished_run / "adapter_model.safetensors")
    fresh = get_peft_model_state_dict(_model(tiny_model_dir, synthetic_dir))
    continued = get_peft_model_state_dict(
        _model(tiny_model_dir, synthetic_dir, "--init_from_run", str(finished_run))
    )
    assert set(continued) == set(saved)
    assert all(torch.equal(continued[k], saved[k]) for k in saved)
    assert not all(torch.equal(fresh[k], saved[k]) for k in saved), "two trained steps moved the adapter"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--lora_r", "8"], "does not fit this recipe's LoRA"),
        (["--lora_preset", "decoder+vision"], "use that run's lora_preset"),
    ],
)
def test_an_adapter_of_other_settings_is_refused(
    finished_run, tiny_model_dir, synthetic_dir, overrides, message
):
    with pytest.raises(ModelLoadError, match=message):
        _model(tiny_model_dir, synthetic_dir, "--init_from_run", str(finished_run), *overrides)


def test_an_adapter_of_another_base_is_refused(finished_run, tiny_model_dir, synthetic_dir, tmp_path):
    other_base = tmp_path / "other_base"
    shutil.copytree(tiny_model_dir, other_base)
    config = load_config(
        TRIAL1,
        ["--model_name_or_path", str(other_base), "--data_dir", str(synthetic_dir), "--init_from_run",
         str(finished_run)],
    )  # fmt: skip
    with pytest.raises(ModelLoadError, match="was trained on .*continue it on its base"):
        build_model(config, load_captions(synthetic_dir))


def test_without_lora_or_without_a_finished_run_it_is_an_error(tiny_model_dir, synthetic_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs a lora_preset"):
        _model(tiny_model_dir, synthetic_dir, "--init_from_run", str(tmp_path), "--lora_preset", "none")
    with pytest.raises(ModelLoadError, match="no adapter_model.safetensors"):
        _model(tiny_model_dir, synthetic_dir, "--init_from_run", str(tmp_path))
