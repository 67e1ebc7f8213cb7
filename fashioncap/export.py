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

ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(run_dir: Path) -> str | None:
    """The base model an adapter run was trained on, as its adapter_config.json records it: None for a run
    that is not an adapter, "" for an adapter that names none; a local base is made absolute, so the export
    loads from any working directory."""
    config = rundir.read_json(run_dir / ADAPTER_CONFIG)
    if config is None:
        return None
    base = config.get("base_model_name_or_path")
    if base is None:
        return ""
    return str(Path(base).resolve()) if Path(base).exists() else base


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


def _save_merged(run_dir: Path, target: Path) -> None:
    """The merged model, its processor and a generation config carrying the run's generation settings."""
    from fashioncap.inference import generation_settings
    from fashioncap.models import load_for_inference

    model, processor = load_for_inference(str(run_dir))
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
        config = json.loads((target / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        write_json_atomic(target / ADAPTER_CONFIG, {**config, "base_model_name_or_path": base})


def export_run(model_dir: str | Path, out: str | Path, merge: bool = False, overwrite: bool = False) -> Path:
    """Write the run at `model_dir` to `out` (atomically), merged or as its adapter; returns `out`."""
    from fashioncap.hub import card_metrics, write_model_card

    run_dir, out = Path(model_dir), Path(out)
    if not run_dir.is_dir():
        raise missing_path("run dir", run_dir)
    config = rundir.run_config(run_dir)
    if config is None:
        raise MissingPathError(f"{run_dir} is not a fashioncap run (no {rundir.RUN_CONFIG}): give a run dir")
    _refuse_existing(out, overwrite)
    base = adapter_base(run_dir)
    if merge:
        refuse_unmergeable(run_dir, base)
    card_config = {
        **config,
        "model": {**config["model"], "model_name_or_path": base or config["model"]["model_name_or_path"]},
    }
    with atomic_directory(out, overwrite=True) as tmp:
        if merge:
            _save_merged(run_dir, tmp)
        else:
            _copy_weights(run_dir, tmp, base)
        shutil.copy2(run_dir / rundir.RUN_CONFIG, tmp / rundir.RUN_CONFIG)
        write_model_card(
            tmp, card_config, card_metrics(run_dir), checkpoint=rundir.scored_checkpoint(run_dir),
            merged=merge, location=str(out.resolve()),
        )  # fmt: skip
    return out
