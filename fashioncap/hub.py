"""Model cards, and pushing a trained run to the Hugging Face Hub.

Only the weights (the adapter, or the model of a full fine-tune; with `--merged`, the model with the LoRA folded
in, as `fashioncap export --merge` writes it), the processor files and the card go up unless asked otherwise (`--include`): a run dir also holds checkpoints, optimizer states and `training_args.bin`, which
can carry a Hub token. The token is read by huggingface_hub from its usual places (HF_TOKEN, `hf auth login`)
and never printed, logged or written; an upload whose files contain it is refused. Data is never uploaded: the
card names the training data and its terms of use as the data dir's build_report.json records them.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from huggingface_hub import HfApi, get_token

from fashioncap import rundir
from fashioncap.errors import MissingPathError, UserError, missing_path
from fashioncap.io_utils import write_text_atomic
from fashioncap.recipe_keys import GENERATION_DEFAULTS
from fashioncap.scoretable import HEADLINE_METRICS, score_table

CARD = "README.md"
UPLOAD_PATTERNS = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def card_scores(metrics: dict | None) -> dict:
    """The headline metrics from `eval` (`CIDEr`) or the Trainer's test metrics (`test_CIDEr`); None kept."""
    metrics = metrics or {}
    return {
        name: metrics.get(name, metrics.get(f"test_{name}"))
        for name in HEADLINE_METRICS
        if name in metrics or f"test_{name}" in metrics
    }


def is_hub_id(name: str) -> bool:
    """`owner/name` and not a local directory (nor a relative path such as `../base`)."""
    return (
        re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None
        and not {".", ".."} & set(name.split("/"))
        and not Path(name).exists()
    )


def with_adapter_base(run_dir: Path, config: dict) -> dict:
    """The run's recipe naming the base its adapter loads onto as it lies now (a local one absolute, found
    from the run dir wherever it was trained or moved); the recipe as it is for a run that is no adapter."""
    base = rundir.adapter_base(run_dir)
    return {**config, "model": {**config["model"], "model_name_or_path": base}} if base else config


class UploadRefusedError(UserError, PermissionError):
    """An upload that would publish the Hub token."""


def require_token() -> None:
    """Pushing needs a Hub token: say so before anything is prepared, uploaded or trained."""
    if not get_token():
        raise UserError(
            "no Hugging Face token to push with: run `hf auth login` or set HF_TOKEN "
            "(`fashioncap push --dry-run` shows what would be uploaded without one)"
        )


def data_terms(data: dict) -> str:
    """The training data's terms of use as its data dir's build_report.json records them ("terms")."""
    if data.get("data_from_hub"):
        return f"those of the Hub data set {data['data_dir']}"
    report = rundir.read_json(Path(data["data_dir"]) / "build_report.json") or {}
    return report.get("terms") or "not recorded in the data dir's build_report.json (see where it came from)"


def _card_metadata(config: dict, scores: dict, name: str, dataset: str, split: str, is_adapter: bool) -> dict:
    """The card's YAML header: what the Hub indexes (library, base model, tags, data set, model-index)."""
    base = config["model"]["model_name_or_path"]
    meta = {
        "library_name": "peft" if is_adapter else "transformers",
        **({"base_model": base} if is_hub_id(base) else {}),  # the Hub rejects a base_model that is not an id
        "pipeline_tag": "image-to-text",
        "tags": ["image-captioning", "fashion", config.get(rundir.FAMILY, "blip"), "fashioncap"]
        + (["lora"] if is_adapter else []),
        "datasets": [dataset],
        "license": "bsd-3-clause",
    }
    ran = {k: v for k, v in scores.items() if isinstance(v, int | float)}  # a null metric could not run
    if ran:
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-to-text", "name": "Image captioning"},
                        "dataset": {"name": dataset, "type": dataset, "split": split},
                        "metrics": [
                            {"type": k.lower(), "name": k, "value": round(v, 4)} for k, v in ran.items()
                        ],
                    }
                ],
            }
        ]
    return meta


def _describe_rewards(reward: dict) -> str:
    if not reward["rl_weight"]:
        return "none (MLE only)"
    return (
        f"REINFORCE with {', '.join(reward['reward_funcs'])} (weights {reward['reward_weights'] or 'all 1'}), "
        f"rl_weight {reward['rl_weight']}, {reward['num_samples']} samples per image, baseline {reward['baseline']}"
    )


def _describe_lora(model: dict) -> str:
    if model.get("lora_preset", "none") == "none":
        return "none (full fine-tune)"
    vision = (
        f", last {model['vision_lora_layers']} vision layers"
        if model["lora_preset"] == "decoder+vision"
        else ""
    )
    return (
        f"{model['lora_preset']} (r={model['lora_r']}, alpha={model['lora_alpha']}, "
        f"dropout={model['lora_dropout']}, bias={model['lora_bias']}{vision})"
    )


def how_to_use(
    base: str, target: str, is_adapter: bool, generation: dict, model_family, card_prompt: str
) -> str:
    """The card's "How to use": Python blocks that load `target` as it is (an adapter through PEFT; merged
    weights with `pipeline` or `from_pretrained`) and caption product.jpg with the run's generation settings.

    `model_family`: its model and processor classes (`CARD_CLASSES`) and the prompt its processor takes with the
    image (`card_prompt`: the run's `caption_prompt`, else the family's `CARD_PROMPT`; none for BLIP). BLIP's `generate` does not read generation_config.json (its text decoder
    has its own generation config), so the settings are passed explicitly. tests/test_export.py runs these blocks
    against local exports."""
    model_class, processor_class = model_family.CARD_CLASSES
    prompt = f'text="{card_prompt}", ' if card_prompt else ""
    echo = "return_full_text=False, " if card_prompt else ""  # the pipeline would print the prompt first
    settings = ", ".join(f"{k}={v}" for k, v in generation.items())
    image = 'image = Image.open("product.jpg").convert("RGB")\n'
    generate = (
        f'ids = model.generate(**processor(images=image, {prompt}return_tensors="pt"), {settings})\n'
        "print(processor.decode(ids[0], skip_special_tokens=True))"
    )
    if is_adapter:
        peft = (
            "from peft import PeftModel\nfrom PIL import Image\n"
            f"from transformers import {model_class}, {processor_class}\n\n"
            f'base = {model_class}.from_pretrained("{base}")\n'
            f'model = PeftModel.from_pretrained(base, "{target}").merge_and_unload()\n'
            f'processor = {processor_class}.from_pretrained("{target}")\n{image}{generate}'
        )
        return (
            f"The LoRA adapter, loaded onto its base with PEFT:\n```python\n{peft}\n```\n"
            "For weights that load without PEFT (`pipeline`, `from_pretrained`), export the run merged: "
            "`fashioncap export --model-dir RUN --out DIR --merge`, or `fashioncap push --merged`.\n"
        )
    pipe = (
        "from PIL import Image\nfrom transformers import pipeline\n\n"
        f'captioner = pipeline("image-text-to-text", model="{target}")  # transformers 4: "image-to-text"\n'
        f"{image}"
        f'print(captioner(images=image, text="{card_prompt}", {echo}generate_kwargs=dict({settings}))'
        '[0]["generated_text"])'
    )
    direct = (
        f"from PIL import Image\nfrom transformers import {model_class}, {processor_class}\n\n"
        f'model = {model_class}.from_pretrained("{target}")\n'
        f'processor = {processor_class}.from_pretrained("{target}")\n{image}{generate}'
    )
    return (
        f"With a pipeline:\n```python\n{pipe}\n```\n"
        f"With the model and its processor:\n```python\n{direct}\n```\n"
    )


def model_card(
    config: dict,
    metrics: dict | None = None,
    repo_id: str | None = None,
    checkpoint: str | None = None,
    merged: bool = False,
    location: str | None = None,
) -> str:
    """A model card with Hub metadata (base_model, library_name: peft, model-index) and the trial's settings;
    `checkpoint` says which weights these are ('final (step N)' or 'best by eval_CIDEr (step N)'). `merged`:
    the LoRA is folded into the weights; `location`: where the snippets load from (default: `repo_id`)."""
    from fashioncap.models import DEFAULT_FAMILY, family  # torch and PEFT: loaded only when a card is written

    model_family = family(config.get(rundir.FAMILY, DEFAULT_FAMILY))
    model, data, training = config["model"], config["data"], config["training"]
    is_adapter = model.get("lora_preset", "none") != "none" and not merged
    base = model["model_name_or_path"]
    dataset = data["data_dir"] if data.get("data_from_hub") else Path(data["data_dir"]).name
    scores = card_scores(metrics)
    name = repo_id or Path(training["output_dir"]).name
    split = (metrics or {}).get("split") or data.get("test_split", rundir.DEFAULT_SPLIT)  # the split scored
    meta = _card_metadata(config, scores, name, dataset, split, is_adapter)
    # transformers 5 takes the warmup ratio as a float warmup_steps in [0, 1)
    warmup = training.get("warmup_ratio") or training.get("warmup_steps")
    table = score_table({name: scores}, list(scores), label="model") if scores else "(not evaluated)\n"
    scored = f"Checkpoint: {checkpoint}.\n\n" if checkpoint else ""
    global_batch = training.get("global_batch_size")
    global_batch = f" ({global_batch} per optimizer step)" if global_batch else ""
    target = location or repo_id or "<this repo>"
    generation = config.get("generation") or GENERATION_DEFAULTS
    local_base = (
        " (a local model, not on the Hub: push it too, or the adapter cannot be loaded)"
        if is_adapter and not is_hub_id(base)
        else ""
    )
    body = f"""# {name}

{model_family.DISPLAY_NAME} fine-tuned for fashion image captioning with fashioncap{" (LoRA adapter)" if is_adapter else " (LoRA merged into the weights)" if merged else ""}.

## Training
- base model: `{base}`{local_base}
- LoRA: {_describe_lora(model)}
- semantic rewards: {_describe_rewards(config["reward"])}
- data: `{dataset}` (max caption length {data["max_length"]}); terms of use: {data_terms(data)}. The data is not in this repository: `fashioncap push` uploads only the weights, the processor files and this card.
- {training["num_train_epochs"]} epochs, batch {training["per_device_train_batch_size"]} per device{global_batch}, lr {training["learning_rate"]}, {training["lr_scheduler_type"]} schedule, warmup {warmup}, weight decay {training["weight_decay"]}, seed {training["seed"]}

## Scores on the {split} split
{scored}{table}
Metrics on the pycocoevalcap scale (0-1; CIDEr 0-10); n/a: the metric could not run where it was evaluated.

## How to use
{how_to_use(base, target, is_adapter, generation, model_family, model.get("caption_prompt") or model_family.CARD_PROMPT)}
Or, with fashioncap: `fashioncap caption --model-dir {target} IMAGE_OR_DIR`.
"""
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n{body}"


def write_model_card(
    output_dir: str | Path,
    config: dict,
    metrics: dict | None = None,
    repo_id: str | None = None,
    checkpoint: str | None = None,
    merged: bool = False,
    location: str | None = None,
):
    write_text_atomic(
        Path(output_dir) / CARD, model_card(config, metrics, repo_id, checkpoint, merged, location)
    )


def refresh_run_card(run_dir: str | Path) -> None:
    """Rewrite a trained run's own card with the scores it has now (after `eval`), so that it never says
    "(not evaluated)" beside an eval; a dir that is no trained run (a Hub id, an export) is left alone."""
    run_dir = Path(run_dir)
    config = rundir.run_config(run_dir)
    if config is None or not (run_dir / rundir.RESULTS).is_file():
        return
    checkpoint = rundir.scored_checkpoint(run_dir)
    write_model_card(
        run_dir, with_adapter_base(run_dir, config), card_metrics(run_dir), checkpoint=checkpoint
    )


def files_to_upload(run_dir: Path, extra: list[str] | None = None) -> list[str]:
    """Paths relative to `run_dir`, the card included: the default patterns plus `extra` globs, inside the run."""
    root = run_dir.resolve()
    found = {
        p.resolve().relative_to(root).as_posix()
        for pattern in (*UPLOAD_PATTERNS, *(extra or []))
        for p in run_dir.glob(pattern)
        if p.is_file() and root in p.resolve().parents
    }
    return sorted(found | {CARD})


def _refuse_token_leak(run_dir: Path, files: list[str], card: str) -> None:
    token = get_token()
    if not token:
        return
    leaking = [f for f in files if f != CARD and token.encode() in (run_dir / f).read_bytes()]
    if token in card:
        leaking.append(CARD)
    if leaking:
        raise UploadRefusedError(f"refusing to upload: the Hub token appears in {', '.join(leaking)}")


def card_metrics(run_dir: Path) -> dict | None:
    """The scores the card shows: the test split's, else those of the first split the run was evaluated on
    (the card names the split)."""
    return rundir.reported_scores(run_dir) or next(
        (rundir.eval_metrics(run_dir, split) for split in rundir.evaluated_splits(run_dir)), None
    )


def prepare_upload(
    run_dir: str | Path, repo_id: str, extra: list[str] | None = None, merged_dir: str | Path | None = None
) -> tuple[list[str], str]:
    """(files to upload, relative to the folder uploaded, card text); checks that no file carries the Hub token.

    The folder is the run dir, or `merged_dir`: the run exported merged (`fashioncap.export`), whose card then
    says so; the card's scores and settings come from the run either way."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise missing_path("run dir", run_dir)
    config = rundir.run_config(run_dir)
    if config is None:
        raise MissingPathError(f"{run_dir} is not a fashioncap run (no {rundir.RUN_CONFIG})")
    folder = Path(merged_dir) if merged_dir else run_dir
    card = model_card(
        with_adapter_base(run_dir, config),
        card_metrics(run_dir),
        repo_id,
        rundir.scored_checkpoint(run_dir),
        merged=merged_dir is not None,
    )
    files = files_to_upload(folder, extra)
    _refuse_token_leak(folder, files, card)
    return files, card


def push(
    run_dir: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    extra: list[str] | None = None,
    merged_dir: str | Path | None = None,
) -> list[str]:
    """Write the card for `repo_id` into the folder uploaded (the run, or `merged_dir`: the run exported merged)
    and upload its files; returns them (relative paths).

    `dry_run` only works out the files and the card: nothing is written or uploaded (and no token is needed).
    """
    if not dry_run:
        require_token()
    files, card = prepare_upload(run_dir, repo_id, extra, merged_dir)
    if dry_run:
        return files
    folder = Path(merged_dir) if merged_dir else Path(run_dir)
    write_text_atomic(folder / CARD, card)
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=files,
        commit_message="Upload fashioncap run" + (" (merged)" if merged_dir else ""),
    )
    return files
