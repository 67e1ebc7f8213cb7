"""Real runs on many GPUs (issue 12): the seed's global batch on any number of processes, test scores from the
final model (or a best checkpoint from after `rl_start`), and category names for Hub data sets.

The 2-rank run trains the real `fashioncap train` under `accelerate launch` on 2 CPU ranks (gloo).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import distributed_worker as worker
import pytest
from huggingface_hub.errors import EntryNotFoundError

from fashioncap import train as train_module
from fashioncap.configs import (
    FashionCapTrainingArguments,
    apply_global_batch_size,
    batch_arithmetic,
    load_config,
)
from fashioncap.data import group_references
from fashioncap.errors import ConfigError
from fashioncap.hub import model_card
from fashioncap.train import SelectAfterRLStart, category_wordmap, scored_checkpoint
from fashioncap.trainer import build_trainer

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = {"1": ["tee", "t shirt"], "2": "dress"}


def training_args(tmp_path: Path, **settings) -> FashionCapTrainingArguments:
    return FashionCapTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], **settings)


# --- the global batch ------------------------------------------------------------------------------------------


def test_global_batch_size_derives_the_accumulation(tmp_path):
    args = training_args(tmp_path, global_batch_size=16, per_device_train_batch_size=4)
    assert args.gradient_accumulation_steps == 4
    assert batch_arithmetic(args) == "1 process x 4 per device x 4 accumulation = 16"
    unset = training_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=3)
    assert unset.gradient_accumulation_steps == 3, "without global_batch_size nothing is derived"


@pytest.mark.parametrize(
    ("world", "per_device", "accumulation", "message"),
    [
        (8, 16, 1, "global_batch_size 16: 8 processes x 16 per device = 128 images is already more than that; "
                   "set per_device_train_batch_size to a divisor of 2 (16 / 8 processes)"),
        (2, 3, 1, "global_batch_size 16: it is not a multiple of 2 processes x 3 per device = 6; "
                  "set per_device_train_batch_size to a divisor of 8 (16 / 2 processes)"),
        (3, 1, 1, "16 images cannot be split evenly over 3 processes"),
        (2, 4, 4, "gradient_accumulation_steps 4 contradicts global_batch_size 16 = 2 processes x 4 per device "
                  "x 2 accumulation"),
    ],
    ids=["8-gpus-16-per-device", "indivisible", "odd-world", "contradicting-accumulation"],
)  # fmt: skip
def test_a_global_batch_that_does_not_split_is_an_error_naming_the_numbers(
    world, per_device, accumulation, message
):
    args = SimpleNamespace(
        global_batch_size=16, world_size=world, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation, deepspeed=None,
    )  # fmt: skip
    with pytest.raises(ValueError) as raised:
        apply_global_batch_size(args)
    assert message in str(raised.value)


def test_a_deepspeed_config_gets_the_derived_accumulation(tmp_path):
    """The `deepspeed` key fills the config's "auto" values in TrainingArguments.__post_init__, before the
    accumulation is derived: they are filled again, or the Trainer would refuse the mismatch."""
    args = training_args(
        tmp_path, deepspeed=str(REPO / "accelerate_configs/deepspeed_zero2.json"), global_batch_size=16,
        per_device_train_batch_size=8,
    )  # fmt: skip
    config = args.hf_deepspeed_config.config
    assert (args.gradient_accumulation_steps, config["gradient_accumulation_steps"]) == (2, 2)
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"]) == (16, 8)


@pytest.mark.parametrize("trial", [1, 2, 3, 4])
def test_the_real_recipes_train_the_seed_batch_and_score_the_final_model(trial):
    training = load_config(REPO / f"recipes/trial{trial}.yaml", ["--bf16", "false"]).training
    assert (training.global_batch_size, training.per_device_train_batch_size) == (16, 16)
    assert training.gradient_accumulation_steps == 1, "one process: 16 per device, no accumulation"
    assert not training.load_best_model_at_end


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes/demo").glob("*.yaml")))
def test_the_demo_recipes_train_the_same_batch_on_two_processes(recipe):
    """Issue 21: a 2-process demo trained 2 x 32 = 64 images per step, half the steps. Its batch is now fixed:
    on 2 processes the launch stops at once, naming the per-device batch that keeps it."""
    training = load_config(REPO / "recipes/demo" / recipe).training
    assert training.global_batch_size == training.per_device_train_batch_size == 32
    assert training.gradient_accumulation_steps == 1

    def on_two_processes(per_device):
        args = SimpleNamespace(global_batch_size=training.global_batch_size, world_size=2,
                               per_device_train_batch_size=per_device, gradient_accumulation_steps=1,
                               deepspeed=None)  # fmt: skip
        apply_global_batch_size(args)
        return batch_arithmetic(args)

    with pytest.raises(ValueError, match=r"set per_device_train_batch_size to a divisor of 16 \(32 / 2"):
        on_two_processes(training.per_device_train_batch_size)
    assert on_two_processes(16) == "2 processes x 16 per device x 1 accumulation = 32"


@pytest.mark.slow
def test_two_ranks_train_16_images_per_optimizer_step(tmp_path, synthetic_factory):
    """2 ranks x 4 per device x 2 accumulation (derived) = 16: an epoch of 32 rows is 2 optimizer steps; the main
    process logs the arithmetic once; the run records which checkpoint it scored."""
    from test_distributed import accelerate_launch

    data = synthetic_factory(tmp_path / "data", train=32, val=4, test=4, pretrain=4, references=1)
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"tiny_model: true\nlora_preset: none\ndata_dir: {data}\nmax_length: 24\noutput_dir: {run}\nseed: 0\n"
        "global_batch_size: 16\nper_device_train_batch_size: 4\nnum_train_epochs: 1\nlogging_steps: 1\n"
        "eval_strategy: 'no'\nsave_strategy: 'no'\nreport_to: none\ndo_predict: false\n"
        "dataloader_num_workers: 0\ndisable_tqdm: true\n"
    )
    log = accelerate_launch(
        "accelerate_configs/cpu_ddp.yaml", "-m", "fashioncap", "train", "--config", str(recipe)
    )
    assert log.count("images per optimizer step: 2 processes x 4 per device x 2 accumulation = 16") == 1
    state = json.loads((run / "trainer_state.json").read_text())
    epochs = {entry["step"]: entry["epoch"] for entry in state["log_history"] if "loss" in entry}
    assert (state["global_step"], epochs) == (2, {1: 0.5, 2: 1.0}), (
        "32 rows / 16 per step = 2 steps per epoch"
    )
    saved = json.loads((run / "fashioncap_config.json").read_text())["training"]
    assert (saved["global_batch_size"], saved["gradient_accumulation_steps"]) == (16, 2)
    assert json.loads((run / "all_results.json").read_text())["scored_checkpoint"] == "final (step 2)"
    assert "Checkpoint: final (step 2)." in (run / "README.md").read_text()


@pytest.fixture
def synthetic_factory():
    from fashioncap.data.synthetic import build_synthetic

    return build_synthetic


# --- which checkpoint is scored ------------------------------------------------------------------------------------


def test_best_model_selection_never_picks_a_checkpoint_from_before_rl_start(tmp_path):
    """rl_start 0.4 of 3 steps: steps 1 and 2 run at global_step 0 and 1 < 1.2, so RL starts with step 3. The
    scripted eval_CIDEr falls every evaluation: plain selection would take the MLE-only checkpoint of step 1;
    this takes step 3, the only one trained with RL, and the run says so."""
    cider = iter([3.0, 2.0, 1.0])
    model, processor = worker.build_model()
    args = training_args(
        tmp_path, max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1,
        eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1, load_best_model_at_end=True,
        metric_for_best_model="CIDEr", reward_funcs=["als"], rl_weight=1.0, num_samples=2, rl_start=0.4,
        max_sample_tokens=4, num_beams=1, max_new_tokens=4, min_new_tokens=1, remove_unused_columns=False,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    dataset = worker.build_dataset()
    trainer = build_trainer(
        model, processor, args, dataset, group_references(dataset), max_length=32,
        compute_metrics=lambda _: {"CIDEr": next(cider)}, callbacks=[SelectAfterRLStart()],
    )  # fmt: skip
    trainer.train()
    logged = {
        entry["step"]: entry["eval_CIDEr"] for entry in trainer.state.log_history if "eval_CIDEr" in entry
    }
    assert logged == {1: 3.0, 2: 2.0, 3: 1.0}, "the logs keep every evaluation's real score"
    assert [e["step"] for e in trainer.state.log_history if "reward/als" in e] == [3], "RL ran at step 3 only"
    assert Path(trainer.state.best_model_checkpoint).name == "checkpoint-3"
    assert scored_checkpoint(trainer) == "best by CIDEr (step 3)"


def test_the_card_says_which_checkpoint_was_scored():
    recipe = load_config(REPO / "recipes/trial2.yaml", ["--bf16", "false"]).to_dict()
    card = model_card(recipe, {"test_CIDEr": 0.25}, checkpoint="best by eval_CIDEr (step 6250)")
    assert "Checkpoint: best by eval_CIDEr (step 6250)." in card
    assert "batch 16 per device (16 per optimizer step)" in card


# --- category names for Hub data ---------------------------------------------------------------------------------


def hub_recipe(tmp_path: Path, *overrides: str):
    return load_config(
        None,
        ["--data_dir", "someone/fashion-captions", "--data_from_hub", "--output_dir", str(tmp_path / "run"),
         "--use_cpu", *overrides],
    )  # fmt: skip


@pytest.fixture
def categories_file(tmp_path) -> Path:
    path = tmp_path / "names.json"
    path.write_text(json.dumps(CATEGORIES))
    return path


def test_hub_data_takes_category_names_from_the_recipe_or_the_data_set_repo(
    tmp_path, categories_file, monkeypatch
):
    expected = {1: ["tee", "t shirt"], 2: ["dress"]}
    assert (
        category_wordmap(hub_recipe(tmp_path, "--category_names", str(categories_file)), "unused") == expected
    )
    asked = []

    def download(repo_id, filename, repo_type):
        asked.append((repo_id, filename, repo_type))
        return str(categories_file)

    monkeypatch.setattr(train_module, "hf_hub_download", download)
    assert category_wordmap(hub_recipe(tmp_path), "someone/fashion-captions") == expected
    assert asked == [("someone/fashion-captions", "categories.json", "dataset")]


def test_hub_data_without_category_names_stops_sls_before_anything_is_loaded(tmp_path, monkeypatch, caplog):
    def no_file(*args, **kwargs):
        raise EntryNotFoundError("404: categories.json")

    def must_not_load(*args, **kwargs):
        raise AssertionError("the data were loaded before the missing category names were refused")

    monkeypatch.setattr(train_module, "hf_hub_download", no_file)
    monkeypatch.setattr(train_module, "load_captions", must_not_load)
    sls = hub_recipe(tmp_path, "--reward_funcs", "als", "sls", "--rl_weight", "1", "--num_samples", "2")
    with pytest.raises(ConfigError, match="SLS reward needs category names .* set category_names"):
        train_module.train(sls)
    with caplog.at_level(logging.WARNING, logger="fashioncap"):
        assert category_wordmap(hub_recipe(tmp_path), "someone/fashion-captions") == {}
    assert "SLS is 0 for every caption" in caplog.text
