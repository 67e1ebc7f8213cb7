"""BLIP models and processors: the Hub model, a tiny offline one, and the LoRA presets of the four trials."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
)

from fashioncap import rundir
from fashioncap.errors import UserError, closest_path_hint, missing_path
from fashioncap.noise import peft_without_alias_warning
from fashioncap.text import normalize_text

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "Salesforce/blip-image-captioning-large"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]

# Module-name patterns (docs/stack-traps.md): every attention query/key/value and dense layer of the text decoder,
# self- and cross-attention alike, and the attention/MLP projections of a vision-encoder layer.
DECODER_TARGETS = (
    r"text_decoder\.bert\.encoder\.layer\.\d+\."
    r"(?:(?:attention|crossattention)\.self\.(?:query|key|value)|(?:attention|crossattention)\.output\.dense"
    r"|intermediate\.dense|output\.dense)"
)
VISION_LAYER_TARGETS = (
    r"vision_model\.encoder\.layers\.{layers}\.(?:self_attn\.(?:qkv|projection)|mlp\.(?:fc1|fc2))"
)
LORA_PRESETS = ("decoder", "decoder+vision")


class ModelLoadError(UserError, RuntimeError):
    """The model or processor could not be had; the message says what was tried."""


def load_processor(name_or_path: str):
    """BLIP's processor with the PIL image backend: transformers 5's default one needs torchvision."""
    image_processor = BlipImageProcessorPil.from_pretrained(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


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
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    not_local = f"model {name!r} is not a local dir{closest_path_hint(name)}"
    if hub_constants.is_offline_mode():
        raise ModelLoadError(
            f"{not_local}, nor in the Hub cache, and HF_HUB_OFFLINE is set: give a local model dir, or "
            "download it once with network access (unset HF_HUB_OFFLINE)"
        )
    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json"), timeout=hub_constants.HF_HUB_ETAG_TIMEOUT)
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


def load_model_and_processor(
    name_or_path: str = DEFAULT_MODEL,
    label_smoothing: float | None = None,
    dtype: torch.dtype | str | None = None,
):
    """Load BLIP for captioning from a Hub id or a local directory (a full model, never remote code)."""
    local = Path(name_or_path).expanduser()
    source = str(local) if local.exists() else name_or_path
    if not local.exists():
        check_hub_model(name_or_path)
    try:
        model = BlipForConditionalGeneration.from_pretrained(source, dtype=dtype, trust_remote_code=False)
        processor = load_processor(source)
    except (OSError, ValueError) as err:
        where = f"local directory {local}" if local.exists() else f"Hugging Face Hub id {name_or_path!r}"
        hint = (
            " It does not exist locally, and the Hub could not be reached or has no such model"
            " (offline? HF_HUB_OFFLINE is set? a typo?)."
            if not local.exists()
            else " The directory should hold config.json, model.safetensors and the processor files."
        )
        raise ModelLoadError(
            f"could not load a BLIP captioning model from the {where}.{hint} ({' '.join(str(err).split())})"
        ) from err
    if label_smoothing is not None:
        model.config.text_config.label_smoothing = float(label_smoothing)
        model.text_decoder.label_smoothing = float(label_smoothing)
    configure_generation_ids(model, processor.tokenizer)
    return model, processor


def configure_generation_ids(model, tokenizer) -> None:
    """Generation and the Trainer need pad/bos/eos ids on the top-level configs (BLIP keeps them in text_config)."""
    text = model.config.text_config
    model.config.pad_token_id = text.pad_token_id
    model.generation_config.pad_token_id = text.pad_token_id
    model.generation_config.bos_token_id = text.bos_token_id
    model.generation_config.eos_token_id = text.sep_token_id
    if (
        tokenizer.pad_token_id != text.pad_token_id
        or tokenizer.convert_tokens_to_ids("[DEC]") != text.bos_token_id
    ):
        raise ModelLoadError(
            f"tokenizer and model disagree on special tokens: pad {tokenizer.pad_token_id} vs {text.pad_token_id}, "
            f"[DEC] {tokenizer.convert_tokens_to_ids('[DEC]')} vs bos {text.bos_token_id}"
        )


# --- a tiny BLIP built offline (tests, demo) -----------------------------------------------------------------


def caption_vocabulary(captions: Iterable[str]) -> list[str]:
    """Sorted unique words: deterministic across processes, unlike WordPiece training."""
    return sorted({w for c in captions for w in normalize_text(c).split()})


def build_tiny_blip(
    words: Iterable[str], image_size: int = 64, patch_size: int = 16, max_positions: int = 64, seed: int = 0
):
    """A ~1.4M-parameter BLIP with a whole-word vocabulary: sized to learn the synthetic set on 2 CPU cores."""

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *sorted(set(words) - set(SPECIAL_TOKENS))])}
    tokenizer = BertTokenizer(
        vocab=vocab, bos_token="[DEC]", additional_special_tokens=["[ENC]"], model_max_length=max_positions
    )
    config = BlipConfig(
        vision_config=dict(
            hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            image_size=image_size, patch_size=patch_size, initializer_range=0.02,
        ),
        text_config=dict(
            vocab_size=len(vocab), hidden_size=96, encoder_hidden_size=128, intermediate_size=384,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_positions,
            pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[DEC]"], eos_token_id=vocab["[SEP]"],
            sep_token_id=vocab["[SEP]"],
        ),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    configure_generation_ids(model, tokenizer)
    return model, processor


# --- LoRA presets ---------------------------------------------------------------------------------------------


def lora_target_regex(preset: str, num_vision_layers: int, vision_lora_layers: int = 6) -> str:
    """The trials' targets: the decoder's attention and dense layers, plus the last N vision layers for trials 3/4."""
    if preset not in LORA_PRESETS:
        raise ValueError(f"unknown lora_preset {preset!r}; choose one of {LORA_PRESETS}")
    if preset == "decoder":
        return DECODER_TARGETS
    if not 0 < vision_lora_layers <= num_vision_layers:
        raise ValueError(
            f"vision_lora_layers={vision_lora_layers} but the vision encoder has {num_vision_layers} layers"
        )
    layers = (
        "(?:"
        + "|".join(str(i) for i in range(num_vision_layers - vision_lora_layers, num_vision_layers))
        + ")"
    )
    return f"(?:{DECODER_TARGETS}|{VISION_LAYER_TARGETS.format(layers=layers)})"


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


def load_for_inference(model_dir: str, dtype: torch.dtype | str | None = None):
    """A trained run (LoRA adapter dir, merged model dir) or a base model id, ready to caption.

    An adapter is merged into its base for speed; its processor comes from the run dir when saved there.
    """
    path = Path(model_dir)
    adapter_config = path / "adapter_config.json"
    if not adapter_config.is_file():
        model, processor = load_model_and_processor(model_dir, dtype=dtype)
        return model.eval(), processor
    base = rundir.adapter_base(path)
    if not base:
        raise ModelLoadError(
            f"{adapter_config} names no base model: the adapter was trained on a model built in memory "
            "(tiny_model: true), so there is nothing to load it onto; train from a saved model "
            "(model_name_or_path) or with lora_preset: none"
        )
    model, processor = load_model_and_processor(base, dtype=dtype)
    with peft_without_alias_warning():
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    if (path / "processor_config.json").is_file() or (path / "preprocessor_config.json").is_file():
        processor = load_processor(str(path))
    configure_generation_ids(model, processor.tokenizer)
    return model.eval(), processor
