"""LoRA through PEFT, the same for every family: wrap a model on a family's target pattern, continue a run's
adapter. Which modules a preset targets is the family's (`lora_target_regex` in each family module)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file

from fashioncap import rundir
from fashioncap.models.source import ModelLoadError
from fashioncap.noise import peft_without_alias_warning

logger = logging.getLogger(__name__)

# `decoder`: every attention and feed-forward layer of the text decoder, self- and cross-attention alike;
# `decoder+vision` adds the last `vision_lora_layers` blocks of the vision tower.
LORA_PRESETS = ("decoder", "decoder+vision")


def check_preset(preset: str, num_vision_layers: int, vision_lora_layers: int) -> None:
    """One line for a preset no family has, or more vision layers than the tower holds."""
    if preset not in LORA_PRESETS:
        raise ValueError(f"unknown lora_preset {preset!r}; choose one of {LORA_PRESETS}")
    if preset == "decoder+vision" and not 0 < vision_lora_layers <= num_vision_layers:
        raise ValueError(
            f"vision_lora_layers={vision_lora_layers} but the vision encoder has {num_vision_layers} layers"
        )


def last_layers(num_layers: int, count: int) -> str:
    """A regex alternative of the indices of the last `count` of `num_layers` layers: `(?:4|5)`."""
    return "(?:" + "|".join(str(i) for i in range(num_layers - count, num_layers)) + ")"


def apply_lora(
    model,
    target_regex: str,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    bias: str = "none",
    modules_to_save: list[str] | None = None,
):
    """Wrap `model` in a PeftModel. No task_type: peft's causal/seq2seq wrappers break BLIP's forward.

    `modules_to_save` trains full copies of small modules and saves them with the adapter: the demo's tiny base
    never learned the descriptive words, and LoRA cannot teach a word whose embedding and output row are untrained.
    """
    matched = [name for name, _ in model.named_modules() if re.fullmatch(target_regex, name)]
    if not matched:
        raise ValueError(f"LoRA target pattern {target_regex!r} matches no module of {type(model).__name__}")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias=bias,
        target_modules=target_regex,
        modules_to_save=modules_to_save or None,
    )
    with peft_without_alias_warning():
        peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info("LoRA on %d modules: %d trainable of %d parameters (%.3f%%)", len(matched), trainable, total,
                100 * trainable / total)  # fmt: skip
    return peft_model


def continue_from_run(peft_model, run_dir: str | Path) -> None:
    """Start from a finished run's adapter: its LoRA (and modules_to_save) weights into `peft_model`, which must
    have the same base and LoRA settings. RL as a continuation of an MLE run, compared with an MLE continuation
    of the same steps from the same weights, is the fair twin (same compute, same data order)."""
    path = Path(run_dir)
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(
            f"init_from_run {run_dir}: no adapter_model.safetensors there (give the output_dir of a finished "
            "`fashioncap train` with LoRA)"
        )
    base = rundir.adapter_base(path)
    own = peft_model.peft_config["default"].base_model_name_or_path
    if base and own and Path(base).resolve() != Path(own).resolve():  # a Hub id resolves alike both times
        raise ModelLoadError(
            f"init_from_run {run_dir} was trained on {base}, this recipe's model is {own}: continue it on its base"
        )
    try:
        result = set_peft_model_state_dict(peft_model, load_file(weights))
    except RuntimeError as err:  # a tensor of another shape: another lora_r or model
        raise ModelLoadError(
            f"init_from_run {run_dir}: its adapter does not fit this recipe's LoRA ({err})"
        ) from None
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    if result.unexpected_keys or missing:
        raise ModelLoadError(
            f"init_from_run {run_dir}: its adapter has {len(result.unexpected_keys)} weights this recipe's LoRA "
            f"lacks and lacks {len(missing)} it has (e.g. {(result.unexpected_keys or missing)[0]}): use that "
            "run's lora_preset, vision_lora_layers and lora_modules_to_save"
        )
    logger.info("continuing from the adapter of %s", run_dir)
