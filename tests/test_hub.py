"""Model card and `fashioncap push`: the right files, the card's metadata, the token never leaks, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fashioncap.cli import main
from fashioncap.configs import load_config
from fashioncap.hub import model_card, push
from fashioncap.models.blip import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_FAKEtokenFORtestsONLYabcdefghijklmnop"
EVAL_METRICS = {"BLEU-4": 0.12345, "METEOR": 0.2, "ROUGE-L": 0.3, "CIDEr": 1.5, "SPICE": None, "ALS": 0.4,
                "SLS": 0.9, "num_images": 16, "unavailable": {"SPICE": "no jars"}}  # fmt: skip


@pytest.fixture(scope="module")
def recipe() -> dict:
    return load_config(REPO / "recipes/demo/trial4.yaml").to_dict()


@pytest.fixture
def run_dir(tmp_path, recipe, monkeypatch) -> Path:
    """A trained adapter run, with what else a run dir holds: checkpoints, optimizer, training args, eval."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "trial4"
    files = {
        "adapter_config.json": json.dumps({"base_model_name_or_path": DEFAULT_MODEL, "peft_type": "LORA"}),
        "adapter_model.safetensors": "weights",
        "processor_config.json": "{}",
        "tokenizer.json": "{}",
        "tokenizer_config.json": "{}",
        "fashioncap_config.json": json.dumps(
            {**recipe, "model": {**recipe["model"], "model_name_or_path": DEFAULT_MODEL}}
        ),
        "training_args.bin": f"pickled args with hub_token={TOKEN}",
        "optimizer.pt": "state",
        "trainer_state.json": "{}",
        "checkpoint-10/adapter_model.safetensors": "old weights",
        "eval/metrics.json": json.dumps(EVAL_METRICS),
        "eval/predictions.json": "[]",
    }
    for name, text in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    return run


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_metadata_from_a_real_recipe(recipe, table_row):
    card = model_card(recipe, EVAL_METRICS, "me/fashioncap-trial4")
    meta = _front_matter(card)
    assert meta["library_name"] == "peft" and "base_model" not in meta, "a local base is not a Hub model id"
    assert "`outputs/demo/base` (a local model" in card
    assert {"fashion", "image-captioning", "lora"} <= set(meta["tags"]) and meta["datasets"] == ["synthetic"]
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"BLEU-4": 0.1235, "METEOR": 0.2, "ROUGE-L": 0.3, "CIDEr": 1.5, "ALS": 0.4, "SLS": 0.9}
    assert table_row(card, "me/fashioncap-trial4")["SPICE"] == "n/a"
    assert "warmup 0.1" in card and "last 2 vision layers" in card
    assert 'PeftModel.from_pretrained(base, "me/fashioncap-trial4")' in card


def test_model_card_names_a_hub_base_model(recipe):
    recipe = {**recipe, "model": {**recipe["model"], "model_name_or_path": DEFAULT_MODEL}}
    assert _front_matter(model_card(recipe))["base_model"] == DEFAULT_MODEL


def test_model_card_from_training_time_test_metrics(recipe):
    card = model_card(recipe, {"test_CIDEr": 0.7, "test_loss": 1.0}, None)
    assert _front_matter(card)["model-index"][0]["results"][0]["metrics"] == [
        {"type": "cider", "name": "CIDEr", "value": 0.7}
    ]
    assert "model-index" not in _front_matter(model_card(recipe, None))


def test_push_dry_run_shows_files_and_card_and_never_the_token(run_dir, capsys, pushed_files):
    listing = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    assert main(["push", "--model-dir", str(run_dir), "--repo-id", "me/trial4", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    listing_part, card = out.split("--- README.md ---")
    listed = [line.split()[0] for line in listing_part.splitlines() if line.startswith("  ")]
    assert listed == pushed_files
    meta = _front_matter(card.lstrip())
    assert meta["library_name"] == "peft" and meta["base_model"] == DEFAULT_MODEL and meta["model-index"]
    assert TOKEN not in out + err
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == listing, "a dry run writes nothing"


def test_push_uploads_only_the_expected_files_without_network(run_dir, monkeypatch, capsys, pushed_files):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw))
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload_folder", kw)))

    assert main(["push", "--model-dir", str(run_dir), "--repo-id", "me/trial4", "--private"]) == 0
    (_, repo_id, create), (_, upload) = calls
    assert repo_id == "me/trial4" and create["private"] is True
    assert upload["repo_id"] == "me/trial4" and Path(upload["folder_path"]) == run_dir
    assert sorted(upload["allow_patterns"]) == pushed_files
    assert "token" not in create and "token" not in upload, "the token comes from huggingface_hub itself"
    card = (run_dir / "README.md").read_text()
    assert _front_matter(card)["model-index"][0]["name"] == "me/trial4"
    assert TOKEN not in card + "".join(capsys.readouterr())

    calls.clear()
    push(run_dir, "me/public", private=False, extra=["eval/*"])
    assert calls[0][2]["private"] is False
    assert sorted(calls[1][1]["allow_patterns"]) == sorted(
        [*pushed_files, "eval/metrics.json", "eval/predictions.json"]
    )


def test_push_refuses_a_file_that_carries_the_token(run_dir, monkeypatch, capsys):
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: pytest.fail("must not upload"))
    code = main(["push", "--model-dir", str(run_dir), "--repo-id", "me/x", "--include", "training_args.bin"])
    out, err = capsys.readouterr()
    assert code == 2 and "training_args.bin" in err and TOKEN not in out + err


def test_push_needs_a_fashioncap_run(tmp_path, capsys):
    assert main(["push", "--model-dir", str(tmp_path), "--repo-id", "me/x", "--dry-run"]) == 2
    assert "fashioncap_config.json" in capsys.readouterr().err


def test_the_cards_snippets_load_the_runs_family(recipe):
    """A run records its family; the card loads it with that family's classes and prompt (BLIP: none)."""
    merged = {**recipe, "model": {**recipe["model"], "lora_preset": "none"}}
    blip_card = model_card(merged, None, "me/blip-run")
    assert (
        "BlipForConditionalGeneration.from_pretrained" in blip_card
        and "text=" not in blip_card.split("```")[3]
    )
    florence_card = model_card({**merged, "family": "florence2"}, None, "me/florence-run")
    assert "# me/florence-run\n\nFlorence-2 fine-tuned for fashion image captioning" in florence_card
    assert 'Florence2ForConditionalGeneration.from_pretrained("me/florence-run")' in florence_card
    assert 'processor(images=image, text="<CAPTION>", return_tensors="pt")' in florence_card
    assert (
        'captioner(images=image, text="<CAPTION>", return_full_text=False, generate_kwargs' in florence_card
    )
    assert "Blip" not in florence_card and "florence2" in _front_matter(florence_card)["tags"]
    detailed = {
        **merged,
        "family": "florence2",
        "model": {**merged["model"], "caption_prompt": "<DETAILED_CAPTION>"},
    }
    assert 'processor(images=image, text="<DETAILED_CAPTION>", return_tensors="pt")' in model_card(detailed)


def test_a_florence2_run_pushes_its_adapter_or_merged_model_with_a_florence2_card(
    florence2_run, tmp_path, monkeypatch, capsys, pushed_files
):
    """A real Florence-2 run (no network): the adapter, its processor files and the card; with `--merged`, the
    model with the LoRA folded in, whose card captions through the pipeline with the `<CAPTION>` prompt."""
    import shutil

    from huggingface_hub import HfApi

    run = tmp_path / "trial4"
    shutil.copytree(florence2_run, run)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    uploads = []

    def upload_folder(self, **kwargs):
        card = (Path(kwargs["folder_path"]) / "README.md").read_text()
        uploads.append((sorted(kwargs["allow_patterns"]), card))

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert main(["push", "--model-dir", str(run), "--repo-id", "me/florence2-trial4"]) == 0
    assert main(["push", "--model-dir", str(run), "--repo-id", "me/florence2-merged", "--merged"]) == 0
    (adapter, adapter_card), (merged, merged_card) = uploads
    assert adapter == pushed_files
    assert "Florence-2 fine-tuned for fashion image captioning with fashioncap (LoRA adapter)" in adapter_card
    assert 'PeftModel.from_pretrained(base, "me/florence2-trial4")' in adapter_card
    assert {"config.json", "generation_config.json", "model.safetensors", "README.md"} <= set(merged)
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(merged)
    assert not any(f.startswith("adapter_") for f in merged)
    assert 'pipeline("image-text-to-text", model="me/florence2-merged")' in merged_card
    assert 'captioner(images=image, text="<CAPTION>", return_full_text=False' in merged_card
    assert "Blip" not in adapter_card + merged_card and "florence2" in _front_matter(merged_card)["tags"]
