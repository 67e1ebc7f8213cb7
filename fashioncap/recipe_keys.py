"""The recipe's own keys, grouped as `fashioncap train --help` lists them, and the generation defaults.

Standard library only, so `--help` shows them without loading transformers. configs.py takes its generation
defaults and its saved sections from here; tests/test_front_door.py checks the groups against the dataclasses.
"""

from __future__ import annotations

import textwrap

# The evaluation captions' settings when neither the run's recipe nor a flag sets them.
GENERATION_DEFAULTS = {"num_beams": 3, "max_new_tokens": 50, "min_new_tokens": 5}

RECIPE_KEYS = {
    "model": (
        "model_name_or_path", "base_recipe", "tiny_model", "tiny_family", "label_smoothing", "lora_preset",
        "vision_lora_layers", "lora_r", "lora_alpha", "lora_dropout", "lora_bias", "lora_modules_to_save",
        "init_from_run", "caption_prompt",
    ),
    "data": (
        "data_dir", "data_from_hub", "category_names", "train_split", "eval_split", "test_split",
        "max_length", "augment", "build_synthetic_if_missing", "max_train_samples", "max_eval_samples",
    ),
    "reward": (
        "reward_funcs", "reward_weights", "mle_weight", "rl_weight", "loss_type", "num_samples", "baseline",
        "rl_start", "sample_temperature", "sample_top_k", "max_sample_tokens", "mask_truncated_completions",
        "scale_rewards", "kl_weight", "log_completions_steps", "collapse_guard",
        "collapse_guard_steps",
    ),
    "generation": tuple(GENERATION_DEFAULTS),
    "run": ("overwrite_output_dir", "global_batch_size", "cuda_graphs", "zero3_gathered_decoding"),
}  # fmt: skip


def recipe_keys_help() -> str:
    """The keys a recipe (or a --key value override) may set, one line per group."""
    lines = [
        textwrap.fill(f"{group}: {', '.join(keys)}", 100, initial_indent="  ", subsequent_indent="    ")
        for group, keys in RECIPE_KEYS.items()
    ]
    return (
        "Recipe keys (in the YAML file, or --key value on the command line to override it):\n"
        + "\n".join(lines)
        + "\n  and every Seq2SeqTrainingArguments key (output_dir, learning_rate, num_train_epochs, ...)"
    )
