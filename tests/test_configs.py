"""Recipes parse into the dataclasses; unknown keys and bad values are errors that name them."""

import subprocess
import sys
from pathlib import Path

import pytest

from fashioncap.configs import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [*sorted((ROOT / "recipes").glob("trial*.yaml")), *sorted((ROOT / "recipes/demo").rglob("*.yaml")),
           *sorted((ROOT / "recipes/florence2").glob("*.yaml"))]  # fmt: skip
# the frontier point trial 6 stands for (`make frontier`): trial 2 with these keys
FRONTIER_POINT = ["--reward_funcs", "cider", "als_f1", "sls", "--reward_weights", "0.3", "1.0", "1.0",
                  "--rl_weight", "4", "--rl_start", "0", "--loss_type", "grpo"]  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_parses(recipe):
    config = load_config(recipe, ["--bf16", "false"])  # the GPU recipes ask for bf16, which a CPU refuses
    assert config.training.remove_unused_columns is False
    assert config.model.lora_preset in ("decoder", "decoder+vision", "none")


@pytest.mark.parametrize("trial", [1, 2, 3, 4])
def test_seed_recipes_carry_the_seed_settings(trial):
    c = load_config(ROOT / f"recipes/trial{trial}.yaml", ["--bf16", "false"])
    assert c.model.model_name_or_path == "Salesforce/blip-image-captioning-large"
    assert (c.model.lora_r, c.model.lora_alpha, c.model.lora_dropout, c.model.lora_bias) == (
        16,
        32,
        0.05,
        "none",
    )
    assert c.model.lora_preset == ("decoder" if trial in (1, 2) else "decoder+vision")
    assert c.model.vision_lora_layers == 6
    t = c.training
    assert (t.per_device_train_batch_size, t.learning_rate, t.weight_decay, t.num_train_epochs) == (
        16,
        2e-5,
        0.05,
        10,
    )
    assert t.lr_scheduler_type == "cosine" and t.warmup_steps == 0.1
    assert c.data.max_length == 50
    assert (c.training.num_beams, c.training.max_new_tokens, c.training.min_new_tokens) == (3, 50, 5)
    if trial in (2, 4):
        assert c.training.reward_funcs == ["als", "sls"] and c.training.rl_weight > 0
    else:
        assert c.training.rl_weight == 0


@pytest.mark.parametrize("trial", [1, 2, 3, 4, 5, 6])
def test_florence2_recipes_are_the_trials_on_florence2(trial):
    """Only the base model, its caption prompt and where the run goes differ from the BLIP trial."""
    blip = load_config(ROOT / f"recipes/trial{trial}.yaml", ["--bf16", "false"]).to_dict()
    florence2 = load_config(ROOT / f"recipes/florence2/trial{trial}.yaml", ["--bf16", "false"]).to_dict()
    assert florence2["model"] == {
        **blip["model"],
        "model_name_or_path": "florence-community/Florence-2-large",
        "caption_prompt": "<CAPTION>",
    }
    differ = {k for k in blip["training"] if blip["training"][k] != florence2["training"][k]}
    assert differ <= {"output_dir", "hub_model_id", "logging_dir", "run_name"}
    assert florence2["training"]["output_dir"] == f"outputs/florence2/trial{trial}"
    assert {k: v for k, v in blip.items() if k not in ("model", "training", "source")} == {
        k: v for k, v in florence2.items() if k not in ("model", "training", "source")
    }


def test_command_line_overrides_win_and_are_typed():
    c = load_config(ROOT / "recipes/trial4.yaml", ["--lora_r", "8", "--reward_funcs", "sls", "--reward_weights", "2", "--bf16", "false",
                                                   "--baseline=loo", "--learning_rate", "1e-4"])  # fmt: skip
    assert c.model.lora_r == 8 and c.training.reward_funcs == ["sls"] and c.training.weights == [2.0]
    assert c.training.bf16 is False
    assert c.training.baseline == "loo" and c.training.learning_rate == 1e-4


def test_unknown_keys_are_errors_naming_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lora_r: 8\nlora_rank: 16\n")
    with pytest.raises(ValueError, match=r"unknown key lora_rank \(did you mean lora_r\?\) in .*r\.yaml"):
        load_config(recipe)
    with pytest.raises(ValueError, match=r"unknown keys lerning_rate \(did you mean learning_rate\?\), "
                                         r"not_a_key on the command line"):  # fmt: skip
        load_config(None, ["--not_a_key", "1", "--lerning_rate", "1"])


def test_wrong_types_are_errors_naming_the_key_and_where_it_came_from(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lora_r: sixteen\n")
    with pytest.raises(ValueError, match=f"bad value for lora_r in {recipe}: invalid int value: 'sixteen'"):
        load_config(recipe)
    with pytest.raises(ValueError, match="bad value for lora_r on the command line: invalid int value: 'x'"):
        load_config(recipe, ["--lora_r", "x"])
    assert capsys.readouterr().err == "", "no usage of every Trainer key"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--baseline", "median"], "baseline must be"),
        (["--rl_weight", "1"], "reward_funcs is empty"),
        (["--reward_funcs", "als", "sls", "--reward_weights", "1"], "reward_weights"),
        (["--reward_funcs", "als", "--rl_weight", "1", "--baseline", "loo", "--num_samples", "1"], "too few"),
        (["--reward_funcs", "als", "--rl_weight", "1", "--num_samples", "1"], "advantage is always 0"),
        (["--reward_funcs", "als", "--rl_weight", "1", "--sample_top_k", "5"], "sample_top_k"),
        (["--reward_funcs", "als", "--rl_weight", "1", "--scale_rewards", "max"], "scale_rewards"),
        (
            ["--reward_funcs", "als", "--rl_weight", "1", "--kl_weight", "0.1", "--lora_preset", "none"],
            "kl_weight 0.1 needs a LoRA adapter .* lora_preset is none: set a lora_preset, or kl_weight 0",
        ),
    ],
)
def test_inconsistent_reward_settings_are_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_launcher_without_data_says_how_to_build_it(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes/trial4.py"), "--data_dir", str(tmp_path / "facad"),
         "--output_dir", str(tmp_path / "out"), "--bf16", "false"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode != 0
    assert "fashioncap data facad" in result.stderr and str(tmp_path / "facad") in result.stderr


@pytest.mark.parametrize("folder", ["recipes", "recipes/demo", "recipes/demo/florence2"])
def test_trial6_is_trial2_at_the_frontier_point_chosen_on_val(folder):
    """The demo's trial 6 (each family's) is exactly the frontier point measured on val (so its test study confirms
    that point), and the real trial 6 is the real trial 2 with the same keys: only the rewards, the dose and where
    it goes."""
    trial6 = ROOT / ("recipes/trial6.yaml" if folder == "recipes" else f"{folder}/frontier/trial6.yaml")
    chosen = load_config(trial6, ["--bf16", "false"]).to_dict()
    trial2 = load_config(ROOT / folder / "trial2.yaml", ["--bf16", "false", *FRONTIER_POINT]).to_dict()
    for config in (chosen, trial2):
        config.pop("source")
        for key in ("output_dir", "hub_model_id", "logging_dir"):
            config["training"].pop(key, None)
    assert chosen == trial2
