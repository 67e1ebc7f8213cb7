"""Where a model comes from: a local dir or a Hub id, checked in one line before anything loads.

Shared by every family: the offline check, and the `model_type` of a model's own config.json, which picks the
family (`fashioncap.models.family_of_source`) before any weights are read.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from fashioncap import rundir
from fashioncap.errors import UserError, closest_path_hint, missing_path

MODEL_CONFIG = "config.json"


class ModelLoadError(UserError, RuntimeError):
    """The model or processor could not be had; the message says what was tried."""


def is_hub_id(name: str) -> bool:
    """Spelled as a Hub model id (`name` or `owner/name`), so a missing local path of that form is looked up
    there: `outputs/demo/bsae` is no id, `Salesforce/blip-image-captioning-lrge` is."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def check_hub_model(name: str) -> None:
    """Fail at once, in one line, when `name` is not a local path and cannot be had from the Hub.

    For a model that is not in the Hub cache, huggingface_hub retries an unreachable Hub for ~50 s before
    giving up; one request without retries (within HF_HUB_ETAG_TIMEOUT) tells first. A cached model needs no
    network.
    """
    if not is_hub_id(name):
        raise missing_path("model", name, "give a local model dir or a Hub id (owner/name)")
    if isinstance(try_to_load_from_cache(name, MODEL_CONFIG), str):
        return
    not_local = f"model {name!r} is not a local dir{closest_path_hint(name)}"
    if hub_constants.is_offline_mode():
        raise ModelLoadError(
            f"{not_local}, nor in the Hub cache, and HF_HUB_OFFLINE is set: give a local model dir, or "
            "download it once with network access (unset HF_HUB_OFFLINE)"
        )
    try:
        get_hf_file_metadata(hf_hub_url(name, MODEL_CONFIG), timeout=hub_constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError as err:  # the Hub answered: no such model, or not for this token
        answer = " ".join(str(err).split())
        raise ModelLoadError(
            f"{not_local}, and the Hugging Face Hub has no such model that this machine may read ({answer}): "
            "a typo? a private or gated model needs `hf auth login`"
        ) from None
    except (
        Exception
    ) as err:  # refused, timed out, no DNS: whatever the transport raised, the Hub is unreachable
        raise ModelLoadError(
            f"{not_local}, and fashioncap cannot reach the Hugging Face Hub ({hub_constants.ENDPOINT}) to look "
            f"for it ({err}): offline? set HF_HUB_OFFLINE=1 and give a local model dir, or a model already in "
            "the Hub cache"
        ) from None


def load_pretrained(model_class, load_processor, source: str, dtype, display_name: str):
    """A family's model (never remote code) and processor from a checked source; one line when either fails."""
    try:
        model = model_class.from_pretrained(source, dtype=dtype, trust_remote_code=False)
        processor = load_processor(source)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load a {display_name} captioning model from {source!r}: a local dir should hold "
            f"config.json, model.safetensors and the processor files ({' '.join(str(err).split())})"
        ) from err
    return model, processor


def resolve_source(name_or_path: str) -> str:
    """The local path (`~` expanded) when it exists, else the Hub id, checked now that it can be had."""
    local = Path(name_or_path).expanduser()
    if local.exists():
        return str(local)
    check_hub_model(name_or_path)
    return name_or_path


def model_type_of(name_or_path: str) -> str:
    """The `model_type` in the model's own config.json (local dir, adapter run dir: its base's, or Hub id),
    read before any weights load; a dir without one is a one-line error saying what it should hold."""
    source = resolve_source(name_or_path)
    local = Path(source)
    base = rundir.adapter_base(local)
    if base is not None and not (local / MODEL_CONFIG).is_file():
        if not base:
            raise ModelLoadError(
                f"{local / rundir.ADAPTER_CONFIG} names no base model: the adapter was trained on a model built in "
                "memory (tiny_model: true), so there is nothing to load it onto; train from a saved model "
                "(model_name_or_path) or with lora_preset: none"
            )
        return model_type_of(base)
    if local.is_dir():
        config = local / MODEL_CONFIG
        if not config.is_file():
            raise ModelLoadError(
                f"could not load a captioning model from the local directory {local}: it has no {MODEL_CONFIG} "
                "(it should hold config.json, model.safetensors and the processor files)"
            )
    elif local.exists():
        raise ModelLoadError(f"model {name_or_path!r} is a file, not a model dir or a Hub id")
    model_type = model_config(source).get("model_type")
    if not model_type:
        raise ModelLoadError(f"the config.json of model {name_or_path!r} names no model_type")
    return model_type


def model_config(source: str) -> dict:
    """The config.json of a checked source (a local model dir, or a Hub id: the cached or fetched file)."""
    local = Path(source)
    config = local / MODEL_CONFIG if local.is_dir() else Path(hf_hub_download(source, MODEL_CONFIG))
    return json.loads(config.read_text(encoding="utf-8"))
