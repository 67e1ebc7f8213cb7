"""Model cards, and pushing a trained run to the Hugging Face Hub (`fashioncap push`).

Only the weights (the adapter, or the model of a full fine-tune), the processor files and the card go up unless
asked otherwise (`--include`): a run dir also holds checkpoints, optimizer states and `training_args.bin`, which
can carry a Hub token. The token is read by huggingface_hub from its usual places (HF_TOKEN, `hf auth login`)
and never printed, logged or written; an upload whose files contain it is refused.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from fashioncap.evaluation import EVAL_DIR, HEADLINE_METRICS, format_score
from fashioncap.io_utils import write_text_atomic

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
    """`owner/name` and not a local directory."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).exists()


def model_card(config: dict, metrics: dict | None = None, repo_id: str | None = None) -> str:
    """A model card with Hub metadata (base_model, library_name: peft, model-index) and the trial's settings."""
    model, data, reward, training = config["model"], config["data"], config["reward"], config["training"]
    is_adapter = model.get("lora_preset", "none") != "none"
    base = model["model_name_or_path"]
    base_on_hub = is_hub_id(base)
    dataset = data["data_dir"] if data.get("data_from_hub") else Path(data["data_dir"]).name
    scores = card_scores(metrics)
    ran = {k: v for k, v in scores.items() if isinstance(v, int | float)}  # a null metric could not run
    name = repo_id or Path(training["output_dir"]).name
    meta = {
        "library_name": "peft" if is_adapter else "transformers",
        **(
            {"base_model": base} if base_on_hub else {}
        ),  # the Hub rejects a base_model that is not a model id
        "pipeline_tag": "image-to-text",
        "tags": ["image-captioning", "fashion", "blip", "fashioncap"] + (["lora"] if is_adapter else []),
        "datasets": [dataset],
        "license": "bsd-3-clause",
    }
    if ran:
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-to-text", "name": "Image captioning"},
                        "dataset": {
                            "name": dataset,
                            "type": dataset,
                            "split": data.get("test_split", "test"),
                        },
                        "metrics": [
                            {"type": k.lower(), "name": k, "value": round(v, 4)} for k, v in ran.items()
                        ],
                    }
                ],
            }
        ]
    rewards = (
        f"REINFORCE with {', '.join(reward['reward_funcs'])} (weights {reward['reward_weights'] or 'all 1'}), "
        f"rl_weight {reward['rl_weight']}, {reward['num_samples']} samples per image, baseline {reward['baseline']}"
        if reward["rl_weight"]
        else "none (MLE only)"
    )
    lora = (
        f"{model['lora_preset']} (r={model['lora_r']}, alpha={model['lora_alpha']}, dropout={model['lora_dropout']}, "
        f"bias={model['lora_bias']}"
        + (
            f", last {model['vision_lora_layers']} vision layers"
            if model["lora_preset"] == "decoder+vision"
            else ""
        )
        + ")"
        if is_adapter
        else "none (full fine-tune)"
    )
    # transformers 5 takes the warmup ratio as a float warmup_steps in [0, 1)
    warmup = training.get("warmup_ratio") or training.get("warmup_steps")
    table = "\n".join(f"| {k} | {format_score(v)} |" for k, v in scores.items()) or "| (not evaluated) | |"
    target = repo_id or "<this repo>"
    usage = (
        "from peft import PeftModel\n"
        "from transformers import BlipForConditionalGeneration, BlipProcessor\n\n"
        f'base = BlipForConditionalGeneration.from_pretrained("{base}")\n'
        f'model = PeftModel.from_pretrained(base, "{target}").merge_and_unload()\n'
        f'processor = BlipProcessor.from_pretrained("{target}")'
        if is_adapter
        else "from transformers import BlipForConditionalGeneration, BlipProcessor\n\n"
        f'model = BlipForConditionalGeneration.from_pretrained("{target}")\n'
        f'processor = BlipProcessor.from_pretrained("{target}")'
    )
    body = f"""# {name}

BLIP fine-tuned for fashion image captioning with fashioncap{" (LoRA adapter)" if is_adapter else ""}.

## Training
- base model: `{base}`{"" if base_on_hub else " (a local model, not on the Hub: push it too, or the adapter cannot be loaded)"}
- LoRA: {lora}
- semantic rewards: {rewards}
- data: `{dataset}` (max caption length {data["max_length"]})
- {training["num_train_epochs"]} epochs, batch {training["per_device_train_batch_size"]} per device, lr {training["learning_rate"]}, {training["lr_scheduler_type"]} schedule, warmup {warmup}, weight decay {training["weight_decay"]}, seed {training["seed"]}

## Test scores
| metric | score |
|---|---|
{table}

Metrics on the pycocoevalcap scale (0-1; CIDEr 0-10); n/a: the metric could not run where it was evaluated.

## Use
```python
{usage}
```
Or, with fashioncap: `fashioncap caption --model-dir {target} IMAGE_OR_DIR`.
"""
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n{body}"


def write_model_card(
    output_dir: str | Path, config: dict, metrics: dict | None = None, repo_id: str | None = None
):
    write_text_atomic(Path(output_dir) / CARD, model_card(config, metrics, repo_id))


def run_metrics(run_dir: Path) -> dict | None:
    """The run's test scores: `fashioncap eval`'s metrics.json when there is one, else the training-time test."""
    for path, key in ((run_dir / EVAL_DIR / "metrics.json", None), (run_dir / "all_results.json", "test")):
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return data.get(key) if key else data
    return None


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
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        return
    leaking = [f for f in files if f != CARD and token.encode() in (run_dir / f).read_bytes()]
    if token in card:
        leaking.append(CARD)
    if leaking:
        raise PermissionError(f"refusing to upload: the Hub token appears in {', '.join(leaking)}")


def prepare_upload(
    run_dir: str | Path, repo_id: str, extra: list[str] | None = None
) -> tuple[list[str], str]:
    """(files to upload relative to the run dir, card text); checks that no file carries the Hub token."""
    run_dir = Path(run_dir)
    config_file = run_dir / "fashioncap_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a fashioncap run (no fashioncap_config.json)")
    card = model_card(json.loads(config_file.read_text(encoding="utf-8")), run_metrics(run_dir), repo_id)
    files = files_to_upload(run_dir, extra)
    _refuse_token_leak(run_dir, files, card)
    return files, card


def push(
    run_dir: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    extra: list[str] | None = None,
) -> list[str]:
    """Write the card for `repo_id` into the run and upload the run's files; returns them (relative paths).

    `dry_run` only works out the files and the card: nothing is written or uploaded.
    """
    files, card = prepare_upload(run_dir, repo_id, extra)
    if dry_run:
        return files
    from huggingface_hub import HfApi

    write_text_atomic(Path(run_dir) / CARD, card)
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(run_dir),
        allow_patterns=files,
        commit_message="Upload fashioncap run",
    )
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="a trained run (output_dir of `fashioncap train`)")
    parser.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--dry-run", action="store_true", help="print the files and the card; upload nothing")
    parser.add_argument(
        "--include", nargs="*", default=[], help="more glob patterns in the run dir to upload (e.g. 'eval/*')"
    )


def run(args: argparse.Namespace) -> int:
    import sys

    run_dir = Path(args.model_dir)
    try:
        if args.dry_run:
            files, card = prepare_upload(run_dir, args.repo_id, args.include)
        else:
            files = push(run_dir, args.repo_id, private=args.private, extra=args.include)
    except (FileNotFoundError, PermissionError) as err:
        print(f"fashioncap push: error: {err}", file=sys.stderr)
        return 2
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(files)} files to {args.repo_id} ({'private' if args.private else 'public'}):")
    for f in files:
        print(f"  {f}  " + ("(model card)" if f == CARD else f"({(run_dir / f).stat().st_size:,} bytes)"))
    if args.dry_run:
        print(f"\n--- {CARD} ---\n{card}")
    return 0
