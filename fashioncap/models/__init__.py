"""Model families behind one seam: each family module owns what differs between captioners.

The family of a model is read from its own config (`model_type`), never from a flag a user must keep in step;
a model of no registered family is a one-line error naming the families there are, before any weights load.
Everything else in fashioncap (trainer, decoding engine, rewards, metrics, evaluation, export, app) goes
through the functions here and in `fashioncap.decoding`, and names no family. What a family module provides is
listed in docs/design.md ("Model families"); adding one is a module and a line in `FAMILIES`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import torch
from peft import PeftModel

from fashioncap import rundir
from fashioncap.errors import ConfigError
from fashioncap.models.source import ModelLoadError, model_type_of, resolve_source
from fashioncap.noise import peft_without_alias_warning

# family name -> its module; each module lists the config `model_type`s it serves in MODEL_TYPES.
FAMILIES = {"blip": "fashioncap.models.blip", "florence2": "fashioncap.models.florence2"}
DEFAULT_FAMILY = "blip"  # the family of the tiny stand-in (`tiny_model: true`) and of DEFAULT_MODEL


def family(name: str) -> ModuleType:
    """The family module registered as `name`."""
    if name not in FAMILIES:
        raise ModelLoadError(f"unknown model family {name!r}: fashioncap has {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name])


def family_of_type(model_type: str, what: str = "the model") -> ModuleType:
    """The family that serves config `model_type`; one line naming the families there are otherwise."""
    for name in FAMILIES:
        module = family(name)
        if model_type in module.MODEL_TYPES:
            return module
    raise ModelLoadError(
        f"{what} is a {model_type!r} model, of no model family fashioncap has (families: "
        f"{', '.join(FAMILIES)}): fine-tune a captioner of one of them"
    )


def family_of(model: torch.nn.Module) -> ModuleType:
    """The family of a model in memory (PEFT-wrapped or not), by its config's `model_type`."""
    return family_of_type(model.config.model_type, type(model).__name__)


def family_of_processor(processor) -> ModuleType:
    """The family whose processor this is (the collator lays caption tokens out as its decoder expects)."""
    for name in FAMILIES:
        if family(name).owns_processor(processor):
            return family(name)
    raise ModelLoadError(
        f"a {type(processor).__name__} is the processor of no model family fashioncap has ({', '.join(FAMILIES)})"
    )


def family_of_source(name_or_path: str) -> ModuleType:
    """The family of a local model dir, an adapter run (its base's) or a Hub id, from its config.json alone."""
    return family_of_type(model_type_of(name_or_path), f"model {name_or_path!r}")


def load_model_and_processor(
    name_or_path: str,
    label_smoothing: float | None = None,
    dtype: torch.dtype | str | None = None,
    caption_prompt: str | None = None,
):
    """A captioner and its processor from a Hub id or a local dir, by the family its config names; with the
    recipe's `caption_prompt` (None: the family's own)."""
    model_family = family_of_source(name_or_path)
    model, processor = model_family.load_model_and_processor(resolve_source(name_or_path), dtype=dtype)
    if label_smoothing is not None:
        model_family.set_label_smoothing(model, label_smoothing)
    set_caption_prompt(model, processor, caption_prompt)
    return model, processor


def set_caption_prompt(model, processor, caption_prompt: str | None) -> None:
    """The prompt the model's processor takes with each image, for a family that takes one; one line for a
    prompt given to a family that takes none."""
    if caption_prompt is None:
        return
    model_family = family_of(model)
    if not model_family.CARD_PROMPT:
        raise ConfigError(
            f"caption_prompt {caption_prompt!r}: a {model_family.DISPLAY_NAME} model takes no prompt, only the image"
        )
    model_family.set_caption_prompt(model, processor, caption_prompt)


def build_tiny_model(words, seed: int = 0, family_name: str = DEFAULT_FAMILY):
    """A family's tiny stand-in, built offline with a whole-word vocabulary of `words` (tests, the demo)."""
    return family(family_name).build_tiny(words, seed=seed)


def lora_targets(model, preset: str, vision_lora_layers: int) -> str:
    """The module-name regex of a LoRA preset for this model's family and depth."""
    return family_of(model).lora_targets(model, preset, vision_lora_layers)


def load_for_inference(model_dir: str, dtype: torch.dtype | str | None = None):
    """A trained run (LoRA adapter dir, merged model dir) or a base model id, ready to caption with the
    run's caption prompt (its recipe's `caption_prompt`, when it set one).

    An adapter is merged into its base for speed; its processor comes from the run dir when saved there.
    """
    path = Path(model_dir)
    adapter_config = path / rundir.ADAPTER_CONFIG
    prompt = (
        ((rundir.run_config(path) if path.is_dir() else None) or {}).get("model", {}).get("caption_prompt")
    )
    if not adapter_config.is_file():
        model, processor = load_model_and_processor(model_dir, dtype=dtype, caption_prompt=prompt)
        return model.eval(), processor
    model_family = family_of_source(model_dir)  # one line for an adapter without a base, before loading
    base = rundir.adapter_base(path)
    model, processor = load_model_and_processor(base, dtype=dtype)
    with peft_without_alias_warning():
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    if (path / "processor_config.json").is_file() or (path / "preprocessor_config.json").is_file():
        processor = model_family.load_processor(str(path))
    model_family.configure_generation_ids(model, processor.tokenizer)
    set_caption_prompt(model, processor, prompt)
    return model.eval(), processor
