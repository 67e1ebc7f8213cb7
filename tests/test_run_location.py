"""A run works from any working directory and after its outputs/ tree is moved or copied: an adapter's local base
is stored relative to the run dir and resolved against it (runs trained before that keep working); a Hub id
stays as it is; the card of a pushed adapter names a Hub id as its base or says that its base is not on the Hub;
and `eval` writes its scores into the run's own card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from fashioncap import rundir
from fashioncap.cli import main
from fashioncap.configs import load_config

REPO = Path(__file__).resolve().parents[1]
FAST = ["--num-beams", "1", "--max-new-tokens", "4"]
HUB_BASE = "Salesforce/blip-image-captioning-base"


def demo_tree(root: Path, tiny_model_dir: Path) -> Path:
    """root/outputs/demo/{base, trial4}: an adapter trained from the repo root, as the demo leaves it (its
    adapter_config.json names the base `outputs/demo/base`, relative to where training ran); returns the run."""
    from transformers import BlipForConditionalGeneration

    from fashioncap.models.blip import load_processor, lora_target_regex
    from fashioncap.models.lora import apply_lora

    base = root / "outputs" / "demo" / "base"
    shutil.copytree(tiny_model_dir, base)
    model = BlipForConditionalGeneration.from_pretrained(base)
    model = apply_lora(
        model, lora_target_regex("decoder", model.config.vision_config.num_hidden_layers, 0), r=4
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(torch.randn_like(parameter) * 0.5)
    run = base.parent / "trial4"
    model.save_pretrained(run)
    load_processor(str(base)).save_pretrained(run)
    set_adapter_base(run, "outputs/demo/base")
    recipe = load_config(REPO / "recipes/demo/trial4.yaml").to_dict()
    recipe["model"]["model_name_or_path"] = "outputs/demo/base"
    (run / rundir.RUN_CONFIG).write_text(json.dumps(recipe))
    (run / rundir.RESULTS).write_text(json.dumps({"scored_checkpoint": "final (step 4)"}))
    return run


def set_adapter_base(run: Path, base: str) -> None:
    config = json.loads((run / rundir.ADAPTER_CONFIG).read_text())
    (run / rundir.ADAPTER_CONFIG).write_text(json.dumps({**config, "base_model_name_or_path": base}))


def stored_base(run: Path) -> str:
    return json.loads((run / rundir.ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


@pytest.fixture
def tree(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """The demo tree under tmp_path/tree, the working directory elsewhere (tmp_path/cwd)."""
    run = demo_tree(tmp_path / "tree", tiny_model_dir)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return run


@pytest.fixture(scope="module")
def photo(synthetic_dir) -> str:
    return str(next((synthetic_dir / "images" / "test").iterdir()))


def test_a_local_base_is_stored_relative_to_the_run_and_a_hub_id_as_it_is(tree):
    rundir.store_base_relative(tree)
    assert stored_base(tree) == "../base"
    assert rundir.adapter_base(tree) == str(tree.parent / "base")
    set_adapter_base(tree, HUB_BASE)
    rundir.store_base_relative(tree)
    assert stored_base(tree) == HUB_BASE and rundir.adapter_base(tree) == HUB_BASE


@pytest.mark.parametrize("stored", ["as trained before (relative to the working dir)", "relative to the run"])
def test_caption_eval_and_merge_work_from_another_directory(stored, tree, photo, synthetic_dir, tmp_path):
    if stored == "relative to the run":
        rundir.store_base_relative(tree)
    assert main(["caption", "--model-dir", str(tree), photo, *FAST]) == 0
    assert main(["export", "--model-dir", str(tree), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert main(["eval", "--model-dir", str(tree), "--data", str(synthetic_dir), *FAST]) == 0


@pytest.mark.parametrize("how", ["moved", "copied"])
@pytest.mark.parametrize("relative_to_run", [False, True], ids=["old run", "new run"])
def test_a_run_works_after_its_outputs_tree_is_moved_or_copied(how, relative_to_run, tree, photo, tmp_path):
    if relative_to_run:
        rundir.store_base_relative(tree)
    old_root, new_root = tmp_path / "tree", tmp_path / "elsewhere" / "tree"
    if how == "moved":
        shutil.move(old_root, new_root)
    else:
        shutil.copytree(old_root, new_root)
        shutil.rmtree(old_root / "outputs" / "demo" / "base")  # the copy must not lean on the original
    run = new_root / "outputs" / "demo" / "trial4"
    assert rundir.adapter_base(run) == str(new_root / "outputs" / "demo" / "base")
    assert main(["caption", "--model-dir", str(run), photo, *FAST]) == 0


def card_header(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_a_pushed_adapters_card_names_a_hub_base_or_says_its_base_is_not_on_the_hub(tree):
    from fashioncap.hub import is_hub_id, prepare_upload

    rundir.store_base_relative(tree)  # "../base": not an owner/name id, from wherever it is read
    assert not is_hub_id("../base")
    _, card = prepare_upload(tree, "me/trial4")
    assert "base_model" not in card_header(card)
    assert f"base model: `{tree.parent / 'base'}` (a local model, not on the Hub" in card
    set_adapter_base(tree, HUB_BASE)
    _, card = prepare_upload(tree, "me/trial4")
    assert card_header(card)["base_model"] == HUB_BASE and "not on the Hub" not in card


def test_eval_writes_its_scores_into_the_runs_own_card(tree, synthetic_dir):
    (tree / "README.md").write_text(
        "# trial4\n\n(not evaluated)\n"
    )  # as training left it without test scores
    assert main(["eval", "--model-dir", str(tree), "--data", str(synthetic_dir), *FAST]) == 0
    card = (tree / "README.md").read_text()
    cider = json.loads((tree / "eval" / "test" / "metrics.json").read_text())["CIDEr"]
    assert "(not evaluated)" not in card and f"{cider:.3f}" in card
    assert "Checkpoint: final (step 4)." in card
