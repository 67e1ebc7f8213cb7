"""A trained run as a folder that Hugging Face users load without fashioncap (`fashioncap export`).

Merged (`merge=True`): the LoRA (decoder and vision, and any `modules_to_save` copies) folded into the base model with
PEFT's `merge_and_unload`, saved with the processor and a generation config holding the run's generation
settings: the family's model class (`from_pretrained`) and `pipeline` load it. Adapter (the default): the
adapter files, the processor and the base model's location, what `PeftModel.from_pretrained` needs. Either way
the folder gets the run's recipe (so `fashioncap caption --model-dir OUT` uses the run's settings) and a model
card whose "How to use" snippets load that folder.

BLIP's `generate` hands generation to its text decoder, whose generation config is built from the model config
and never reads generation_config.json (transformers 5.24): the card's snippets pass the settings explicitly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fashioncap import rundir
from fashioncap.errors import MissingPathError, OutputExistsError, UserError, missing_path
from fashioncap.io_utils import atomic_directory, write_json_atomic


def refuse_unmergeable(run_dir: Path, base: str | None) -> None:
    """One line for a merge that cannot work: an adapter without a base, or a local base that is gone (a Hub
    base that cannot be had fails in one line when loaded, `models.source.check_hub_model`)."""
    from fashioncap.hub import is_hub_id

    if base == "":
        raise UserError(
            f"cannot merge {run_dir}: its adapter names no base model (it was trained on a tiny model built in "
            "memory, tiny_model: true); export it without --merge, or train from a saved base model"
        )
    if base and not Path(base).exists() and not is_hub_id(base):
        raise missing_path(
            "base model", base, "merging needs the model the adapter was trained on: restore it, or export "
            "without --merge"
        )  # fmt: skip


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out} is not empty: pass --overwrite to replace it, or pick a new --out")


def untie_differing_embeddings(model) -> None:
    """A run that trained the word embeddings and the LM head apart (`modules_to_save`) merges into different
    weights (or head biases) where BLIP ties them: its config then says they are not tied, or every load warns
    that the tied weights differ (and leaves them untied anyway)."""
    import torch

    parameters = dict(model.named_parameters(remove_duplicate=False))
    tied = model.get_expanded_tied_weights_keys(all_submodels=True).items()
    if any(not torch.equal(parameters[target], parameters[source]) for target, source in tied):
        model.config.tie_word_embeddings = False
        model.config.text_config.tie_word_embeddings = False
        # A pair still one tensor (Florence-2's encoder embeddings and `shared`) would be saved once, as the source,
        # and the untied load would initialise the target afresh: give the target its own copy.
        for target, source in tied:
            if parameters[target] is parameters[source]:
                module, name = target.rsplit(".", 1)
                setattr(
                    model.get_submodule(module), name, torch.nn.Parameter(parameters[source].detach().clone())
                )


def _save_merged(run_dir: Path, target: Path) -> None:
    """The merged model, its processor and a generation config carrying the run's generation settings."""
    from fashioncap.inference import generation_settings
    from fashioncap.models import load_for_inference

    model, processor = load_for_inference(str(run_dir))
    untie_differing_embeddings(model)
    model.generation_config.update(**generation_settings(run_dir))
    model.generation_config._from_model_config = False  # the run's own settings, not derived from config.json
    model.save_pretrained(target)
    processor.save_pretrained(target)


def _copy_weights(run_dir: Path, target: Path, base: str | None) -> None:
    """What `push` uploads (adapter or full model, processor files), the adapter pointing at `base`."""
    from fashioncap.hub import CARD, files_to_upload

    for name in files_to_upload(run_dir):
        if name != CARD:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / name, target / name)
    if base:
        config = json.loads((target / rundir.ADAPTER_CONFIG).read_text(encoding="utf-8"))
        write_json_atomic(target / rundir.ADAPTER_CONFIG, {**config, "base_model_name_or_path": base})


def export_run(model_dir: str | Path, out: str | Path, merge: bool = False, overwrite: bool = False) -> Path:
    """Write the run at `model_dir` to `out` (atomically), merged or as its adapter; returns `out`."""
    from fashioncap.hub import card_metrics, with_adapter_base, write_model_card

    run_dir, out = Path(model_dir), Path(out)
    if not run_dir.is_dir():
        raise missing_path("run dir", run_dir)
    config = rundir.run_config(run_dir)
    if config is None:
        raise MissingPathError(f"{run_dir} is not a fashioncap run (no {rundir.RUN_CONFIG}): give a run dir")
    _refuse_existing(out, overwrite)
    base = rundir.adapter_base(run_dir)  # absolute when local: the export loads from anywhere
    if merge:
        refuse_unmergeable(run_dir, base)
    with atomic_directory(out, overwrite=True) as tmp:
        if merge:
            _save_merged(run_dir, tmp)
        else:
            _copy_weights(run_dir, tmp, base)
        shutil.copy2(run_dir / rundir.RUN_CONFIG, tmp / rundir.RUN_CONFIG)
        write_model_card(
            tmp, with_adapter_base(run_dir, config), card_metrics(run_dir),
            checkpoint=rundir.scored_checkpoint(run_dir), merged=merge, location=str(out.resolve()),
        )  # fmt: skip
    return out
