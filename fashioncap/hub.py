"""Model cards and pushing a trained run to the Hugging Face Hub.

Only the adapter (or model) weights, the processor files and the card go up unless asked otherwise; the token
is read by huggingface_hub from its usual places and never written anywhere.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from fashioncap.io_utils import write_text_atomic

CARD_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "ALS", "SLS")
UPLOAD_PATTERNS = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "README.md",
    "fashioncap_config.json",
]


def _test_scores(metrics: dict | None) -> dict:
    """`test_CIDEr` -> `CIDEr`: the caption metrics that ran (None means a metric could not run)."""
    scores = {}
    for name in CARD_METRICS:
        value = (metrics or {}).get(f"test_{name}", (metrics or {}).get(name))
        if isinstance(value, int | float):
            scores[name] = value
    return scores


def model_card(config: dict, metrics: dict | None = None, repo_id: str | None = None) -> str:
    """A model card with Hub metadata (base_model, library_name: peft, model-index) and the trial's settings."""
    model, data, reward, training = config["model"], config["data"], config["reward"], config["training"]
    is_adapter = model.get("lora_preset", "none") != "none"
    base = model["model_name_or_path"]
    scores = _test_scores(metrics)
    meta = {
        "library_name": "peft" if is_adapter else "transformers",
        "base_model": base,
        "pipeline_tag": "image-to-text",
        "tags": ["image-captioning", "fashion", "blip", "fashioncap"] + (["lora"] if is_adapter else []),
        "datasets": [Path(data["data_dir"]).name],
        "license": "bsd-3-clause",
    }
    if scores:
        meta["model-index"] = [
            {
                "name": repo_id or Path(training["output_dir"]).name,
                "results": [
                    {
                        "task": {"type": "image-to-text", "name": "Image captioning"},
                        "dataset": {"name": Path(data["data_dir"]).name, "type": data["data_dir"],
                                    "split": data.get("test_split", "test")},  # fmt: skip
                        "metrics": [{"type": k.lower(), "name": k, "value": round(v, 4)} for k, v in scores.items()],
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
    table = "\n".join(f"| {k} | {v:.4f} |" for k, v in scores.items()) or "| (not evaluated) | |"
    usage = (
        "from peft import PeftModel\n"
        "from transformers import BlipForConditionalGeneration, BlipProcessor\n\n"
        f'base = BlipForConditionalGeneration.from_pretrained("{base}")\n'
        f'model = PeftModel.from_pretrained(base, "{repo_id or "<this repo>"}")\n'
        f'processor = BlipProcessor.from_pretrained("{repo_id or "<this repo>"}")'
        if is_adapter
        else "from transformers import BlipForConditionalGeneration\n"
        f'model = BlipForConditionalGeneration.from_pretrained("{repo_id or "<this repo>"}")'
    )
    body = f"""# {repo_id or Path(training["output_dir"]).name}

BLIP fine-tuned for fashion image captioning with [fashioncap](https://github.com/) {"(LoRA adapter)" if is_adapter else ""}.

## Training
- base model: `{base}`
- LoRA: {model["lora_preset"]} (r={model["lora_r"]}, alpha={model["lora_alpha"]}, dropout={model["lora_dropout"]}, bias={model["lora_bias"]}{", last " + str(model["vision_lora_layers"]) + " vision layers" if model["lora_preset"] == "decoder+vision" else ""})
- semantic rewards: {rewards}
- data: `{data["data_dir"]}` (max caption length {data["max_length"]})
- {training["num_train_epochs"]} epochs, batch {training["per_device_train_batch_size"]} per device, lr {training["learning_rate"]}, {training["lr_scheduler_type"]} schedule, warmup ratio {training["warmup_ratio"]}, weight decay {training["weight_decay"]}, seed {training["seed"]}

## Test scores
| metric | score |
|---|---|
{table}

## Use
```python
{usage}
```
"""
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n{body}"


def write_model_card(output_dir: str | Path, config: dict, metrics: dict | None = None, repo_id: str | None = None):
    write_text_atomic(Path(output_dir) / "README.md", model_card(config, metrics, repo_id))


def files_to_upload(run_dir: Path, extra: list[str] | None = None) -> list[Path]:
    patterns = UPLOAD_PATTERNS + list(extra or [])
    return sorted({p for pattern in patterns for p in run_dir.glob(pattern) if p.is_file()})


def push(run_dir: str | Path, repo_id: str, private: bool = False, dry_run: bool = False, extra: list[str] | None = None):
    """Upload the run's adapter/model, processor files and card; returns the list of files."""
    run_dir = Path(run_dir)
    config_file = run_dir / "fashioncap_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a fashioncap run (no fashioncap_config.json)")
    results = run_dir / "all_results.json"
    metrics = json.loads(results.read_text()).get("test") if results.is_file() else None
    write_model_card(run_dir, json.loads(config_file.read_text()), metrics, repo_id)
    files = files_to_upload(run_dir, extra)
    if dry_run:
        return files
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(run_dir),
        allow_patterns=[str(p.relative_to(run_dir)) for p in files],
        commit_message="Upload fashioncap run",
    )
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="a trained run (output_dir of `fashioncap train`)")
    parser.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the files and the card; upload nothing")
    parser.add_argument("--include", nargs="*", default=[], help="extra glob patterns to upload (e.g. 'eval/*')")


def run(args: argparse.Namespace) -> int:
    files = push(args.model_dir, args.repo_id, private=args.private, dry_run=args.dry_run, extra=args.include)
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(files)} files to {args.repo_id}:")
    for f in files:
        print(f"  {f.name}")
    if args.dry_run:
        print("\n" + (Path(args.model_dir) / "README.md").read_text())
    return 0
