"""Every registered model family through the same recipe on its tiny stand-in: train (MLE + RL), evaluate,
caption, and export merged (the merged model loads on its own and captions as the adapter run does). A new
family is a module and a line in `fashioncap.models.FAMILIES`; this test then covers it."""

import json
import math

import pytest
import torch
import transformers
from datasets import Dataset
from PIL import Image

from fashioncap.configs import FashionCapTrainingArguments
from fashioncap.inference import generate_captions
from fashioncap.models import FAMILIES, build_tiny_model, family, family_of, load_for_inference, lora_targets
from fashioncap.models.lora import apply_lora
from fashioncap.trainer import build_trainer

CAPTIONS = ["a red dress with short sleeve", "a blue tee", "a green striped bag", "a pair of black boots"]
COLOURS = [(200, 30, 30), (30, 30, 200), (30, 200, 30), (20, 20, 20)]
WORDMAP = {1: "dress", 2: "tee", 3: "bag", 4: ["boot", "boots"]}
DECODING = dict(num_beams=2, max_new_tokens=6)


def rows(n: int, training: bool = True) -> Dataset:
    return Dataset.from_list([
        {"image": Image.new("RGB", (64, 64), COLOURS[i % 4]), "image_id": i, "category": i % 4 + 1,
         "references": [CAPTIONS[i % 4]], **({"caption": CAPTIONS[i % 4]} if training else {})}
        for i in range(n)
    ])  # fmt: skip


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_trains_mle_and_rl_evaluates_captions_and_exports(name, tmp_path):
    model, processor = build_tiny_model({w for c in CAPTIONS for w in c.split()}, family_name=name)
    assert family_of(model) is family(name)
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    model = apply_lora(model, lora_targets(model, "decoder+vision", 1), r=4)
    args = FashionCapTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, report_to=[], remove_unused_columns=False,
        use_cpu=True, save_strategy="no", max_steps=2, logging_steps=1, learning_rate=1e-3, reward_funcs=["sls"],
        rl_weight=1.0, num_samples=2, max_sample_tokens=6, **DECODING,
    )  # fmt: skip
    trainer = build_trainer(model, processor, args, rows(8), category_wordmap=WORDMAP)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logged = trainer.state.log_history[0]
    assert {"loss/mle", "loss/rl", "reward/sls"} <= set(logged) and torch.isfinite(
        torch.tensor(logged["loss"])
    )
    moved = [
        n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert any("vision" in n for n in moved) and len(moved) > len(before) // 2

    predictions = trainer.predict(rows(4, training=False)).predictions
    assert predictions.shape[0] == 4 and (predictions[:, 0] == predictions[0, 0]).all(), "the start token"

    run = tmp_path / "run"
    trainer.save_model(str(run))
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(
        json.dumps({**adapter_config, "base_model_name_or_path": str(base)})
    )
    images = [Image.new("RGB", (64, 64), c) for c in COLOURS]
    captioner, run_processor = load_for_inference(str(run))
    from_run = list(generate_captions(captioner, run_processor, images, **DECODING))
    assert len(from_run) == 4 and all(isinstance(c, str) for c in from_run)

    merged = tmp_path / "merged"
    captioner.save_pretrained(merged)
    run_processor.save_pretrained(merged)
    reloaded, reloaded_processor = family(name).load_model_and_processor(str(merged))
    assert list(generate_captions(reloaded.eval(), reloaded_processor, images, **DECODING)) == from_run


def write_rl_recipe(name: str, data_dir, tmp_path, **settings):
    """A saved tiny base of the family (the data's vocabulary) and a 2-step MLE + RL recipe on it, training into
    tmp_path/run; the recipe's path."""
    from fashioncap.data import load_captions
    from fashioncap.text import caption_vocabulary

    words = caption_vocabulary(c for split in load_captions(data_dir).values() for c in split["caption"])
    model, processor = build_tiny_model(words, family_name=name)
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    recipe = {
        "model_name_or_path": str(tmp_path / "base"), "lora_preset": "decoder+vision", "vision_lora_layers": 1,
        "lora_r": 4, "data_dir": str(data_dir), "max_length": 30, "reward_funcs": ["sls"], "rl_weight": 1.0,
        "num_samples": 2, "max_sample_tokens": 6, "num_beams": 2, "max_new_tokens": 6, "min_new_tokens": 1,
        "output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 4,
        "learning_rate": 1.0e-3, "save_strategy": "no", "eval_strategy": "no", "do_predict": False,
        "report_to": "none", "disable_tqdm": True, "logging_steps": 1, **settings,
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({k: v for k, v in recipe.items() if v is not None}))
    return path


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_through_the_commands_train_eval_caption_export(name, synthetic_dir, tmp_path, capsys):
    """`fashioncap train` (MLE + RL) from a saved base of the family, `eval`, `report`, `caption`, `export
    --merge`: the report shows the run's scores and curves; the merged folder loads with the family's own class
    and captions exactly as `fashioncap caption` does."""
    from fashioncap.cli import main

    run, merged = tmp_path / "run", tmp_path / "merged"
    prompt = "<DETAILED_CAPTION>" if family(name).CARD_PROMPT else None
    recipe = write_rl_recipe(name, synthetic_dir, tmp_path, caption_prompt=prompt)
    assert main(["train", "--config", str(recipe)]) == 0
    saved = json.loads((run / "fashioncap_config.json").read_text())
    assert saved["family"] == name and saved["model"]["caption_prompt"] == prompt

    assert main(["eval", "--model-dir", str(run), "--data", str(synthetic_dir), "--batch-size", "4"]) == 0
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert main(["report", str(run), "--out", str(tmp_path / "report"), "--data", str(synthetic_dir)]) == 0
    (reported,) = json.loads((tmp_path / "report" / "summary.json").read_text())["runs"].values()
    assert reported["CIDEr"] == metrics["CIDEr"] and reported["ALS"] == metrics["ALS"]
    assert list((tmp_path / "report" / "curves").glob("*.png")), "and its training curves"

    images = sorted(p for p in synthetic_dir.rglob("*") if p.suffix in (".png", ".jpg"))[:3]
    capsys.readouterr()
    assert main(["caption", "--model-dir", str(run), *map(str, images)]) == 0
    captions = [json.loads(line)["caption"] for line in capsys.readouterr().out.splitlines()]
    assert len(captions) == len(images) == 3

    assert main(["export", "--model-dir", str(run), "--out", str(merged), "--merge"]) == 0
    model_class, _ = family(name).CARD_CLASSES
    reloaded = getattr(transformers, model_class).from_pretrained(merged)
    assert family_of(reloaded) is family(name)
    capsys.readouterr()
    assert main(["caption", "--model-dir", str(merged), *map(str, images)]) == 0
    assert [json.loads(line)["caption"] for line in capsys.readouterr().out.splitlines()] == captions


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_model_builds_the_tiny_family_and_trains_it_in_full(name, synthetic_dir, tmp_path):
    from fashioncap.cli import main

    run = tmp_path / "base"
    assert main(["train", "--config", "recipes/demo/base.yaml", "--tiny_family", name, "--data_dir",
                 str(synthetic_dir), "--output_dir", str(run), "--max_steps", "1", "--per_device_train_batch_size",
                 "4", "--global_batch_size", "4", "--disable_tqdm", "true"]) == 0  # fmt: skip
    assert json.loads((run / "fashioncap_config.json").read_text())["family"] == name
    assert json.loads((run / "config.json").read_text())["model_type"] in family(name).MODEL_TYPES


@pytest.mark.slow
@pytest.mark.parametrize("config", ["accelerate_configs/cpu_ddp.yaml", "accelerate_configs/zero3.yaml"])
@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_trains_mle_and_rl_on_two_ranks(name, config, synthetic_dir, tmp_path):
    """DDP and DeepSpeed ZeRO-3 on 2 CPU ranks (2 images each): the RL step runs on both ranks in step."""
    from test_distributed import accelerate_launch

    recipe = write_rl_recipe(
        name, synthetic_dir, tmp_path, per_device_train_batch_size=2, global_batch_size=4
    )
    accelerate_launch(config, "-m", "fashioncap", "train", "--config", str(recipe))
    logged = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    rl_steps = [entry for entry in logged if "loss/rl" in entry]
    assert rl_steps and all(math.isfinite(entry["loss"]) for entry in rl_steps)
    assert json.loads((tmp_path / "run" / "fashioncap_config.json").read_text())["family"] == name
