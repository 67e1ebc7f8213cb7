"""`fashioncap demo/study --family NAME`: each family's demo recipes (recipes/demo/ for BLIP, recipes/demo/<family>/
for the others) train its tiny stand-in, write to their own outputs, and fine-tune modules the stand-in has."""

import json
import re

import pytest
import torch
import transformers

from fashioncap import demo
from fashioncap.cli import main
from fashioncap.configs import load_config
from fashioncap.errors import ConfigError
from fashioncap.models import DEFAULT_FAMILY, FAMILIES, build_tiny_model, family, lora_targets

FAMILY_DEMOS = [name for name in FAMILIES if demo.family_recipes(name).is_dir()]


def test_every_family_has_a_demo():
    assert FAMILY_DEMOS == list(FAMILIES)


def test_the_family_flag_picks_the_family_recipes_and_outputs(monkeypatch):
    """The flag picks the folder and the output dirs; the recipes there write where the flag says."""
    calls = {}
    monkeypatch.setattr(demo, "run_demo", lambda *args: calls.__setitem__("demo", args))
    assert main(["demo", "--family", "florence2"]) == 0
    recipes, report_dir, force, family_name = calls["demo"]
    assert recipes == demo.RECIPES / "florence2" and report_dir == "outputs/demo-florence2/report"
    assert (force, family_name) == (False, "florence2")
    assert main(["demo"]) == 0 and calls["demo"][:2] == (
        demo.RECIPES,
        "outputs/demo/report",
    )  # BLIP unchanged

    from fashioncap import study

    monkeypatch.setattr(
        study, "run_study", lambda *args, **kwargs: calls.__setitem__("study", (args, kwargs))
    )
    monkeypatch.setattr(study, "study_markdown", lambda result: "")
    assert main(["study", "--family", "florence2"]) == 0
    (out, runs, _seeds, recipes, *_), kwargs = calls["study"]
    assert (out, recipes, kwargs) == (
        "outputs/study-florence2",
        demo.RECIPES / "florence2",
        {"family_name": "florence2"},
    )

    with pytest.raises(
        ConfigError, match=r"--family blip2: fashioncap has no such model family \(blip, florence2"
    ):
        demo.family_recipes("blip2")


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_each_family_demo_recipe_writes_to_its_outputs_and_targets_modules_its_stand_in_has(name):
    recipes = demo.demo_recipes(demo.family_recipes(name))
    outputs = demo.family_outputs("demo", name)
    base = load_config(recipes.pop(demo.BASE))
    assert base.model.tiny_model and base.model.tiny_family == name
    assert base.training.output_dir == f"{outputs}/base"
    model, _ = build_tiny_model(["a", "red", "dress"], family_name=name)
    modules = [module_name for module_name, _ in model.named_modules()]
    assert set(recipes) == {f"trial{i}" for i in range(1, 6)}
    for trial, path in recipes.items():
        config = load_config(path)
        assert config.training.output_dir == f"{outputs}/{trial}"
        assert config.model.model_name_or_path == f"{outputs}/base"
        pattern = lora_targets(model, config.model.lora_preset, config.model.vision_lora_layers)
        assert any(re.fullmatch(pattern, module_name) for module_name in modules), trial
        for saved in config.model.lora_modules_to_save:  # PEFT matches a module whose name ends so
            assert any(m == saved or m.endswith(f".{saved}") for m in modules), (trial, saved)
    assert DEFAULT_FAMILY in FAMILY_DEMOS


def test_the_florence2_demo_base_trains_and_a_trial_exports_as_it_captions(synthetic_dir, tmp_path, capsys):
    """A few steps of the Florence-2 demo's base (its tiny stand-in in full), then of trial 1 on it (LoRA and a
    trained copy of the decoder's word embeddings and of the LM head, which the stand-in ties to its encoder's):
    the merged export holds every weight of the run (none initialised afresh) and captions as the run does."""
    recipes = demo.family_recipes("florence2")
    base, run, merged = tmp_path / "base", tmp_path / "trial1", tmp_path / "merged"
    common = ["--data_dir", str(synthetic_dir), "--per_device_train_batch_size", "4", "--global_batch_size", "4",
              "--dataloader_num_workers", "0", "--disable_tqdm", "true"]  # fmt: skip
    assert main(["train", "--config", str(recipes / "base.yaml"), "--output_dir", str(base), "--max_steps", "4",
                 *common]) == 0  # fmt: skip
    assert json.loads((base / "fashioncap_config.json").read_text())["family"] == "florence2"
    assert main(["train", "--config", str(recipes / "trial1.yaml"), "--model_name_or_path", str(base),
                 "--output_dir", str(run), "--max_steps", "2", "--learning_rate", "0.05", *common]) == 0  # fmt: skip

    assert main(["export", "--model-dir", str(run), "--out", str(merged), "--merge"]) == 0
    model_class, _ = family("florence2").CARD_CLASSES
    reloaded, loading = getattr(transformers, model_class).from_pretrained(merged, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"], loading
    text = reloaded.model.language_model  # the decoder's word embeddings trained apart from the encoder's
    assert not torch.equal(text.decoder.embed_tokens.weight, text.encoder.embed_tokens.weight)

    images = sorted(p for p in synthetic_dir.rglob("*") if p.suffix in (".png", ".jpg"))[:3]
    captions = []
    for model_dir in (run, merged):
        capsys.readouterr()
        assert main(["caption", "--model-dir", str(model_dir), *map(str, images)]) == 0
        captions.append([json.loads(line)["caption"] for line in capsys.readouterr().out.splitlines()])
    assert len(captions[0]) == 3 and captions[1] == captions[0]
