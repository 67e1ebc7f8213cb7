"""The BLIP family: what fashioncap needs of `BlipForConditionalGeneration` and nothing any other module knows.

- loading (a Hub id or local dir, already checked by `fashioncap.models`) and its processor (PIL image backend);
- the LoRA presets' module names;
- what the decoding engine needs (`TextDecoder`): the image encoded once by the vision model, then every text
  decoder layer's cross-attention K/V computed once per image (`fashioncap.decoding`);
- `sdpa_attention`: BLIP's attention through fused SDPA (transformers 5.24 refuses `attn_implementation="sdpa"`);
- a tiny stand-in built offline (tests, the demo's base);
- the class names the model card's snippets load it with.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterable

import torch
from transformers import (
    AutoTokenizer,
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
)
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.blip.modeling_blip import BlipAttention
from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

from fashioncap.attention import attend, cached_keys_values, grouped_cross_attention, merge_heads, split_heads
from fashioncap.models.lora import check_preset, last_layers
from fashioncap.models.source import ModelLoadError, load_pretrained

NAME = "blip"
DISPLAY_NAME = "BLIP"
MODEL_TYPES = ("blip", "blip_text_model")  # the captioner, and its text decoder alone
DEFAULT_MODEL = "Salesforce/blip-image-captioning-large"
CARD_CLASSES = ("BlipForConditionalGeneration", "BlipProcessor")
CARD_PROMPT = ""  # the processor takes the image alone
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


# --- loading ----------------------------------------------------------------------------------------------------


def load_processor(name_or_path: str):
    """BLIP's processor with the PIL image backend: transformers 5's default one needs torchvision."""
    image_processor = BlipImageProcessorPil.from_pretrained(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_model_and_processor(source: str, dtype: torch.dtype | str | None = None):
    """BLIP for captioning from a local dir or a Hub id that can be had."""
    model, processor = load_pretrained(
        BlipForConditionalGeneration, load_processor, source, dtype, DISPLAY_NAME
    )
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


def owns_processor(processor) -> bool:
    return isinstance(processor, BlipProcessor)


def caption_inputs(tokenizer, captions: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[DEC] caption [SEP]` per row (BERT's [CLS] replaced: BLIP's forward does not rewrite the start token),
    and the attention mask; padded with [PAD]."""
    encoded = tokenizer(
        captions, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    input_ids = encoded.input_ids
    input_ids[:, 0] = tokenizer.convert_tokens_to_ids("[DEC]")
    return input_ids, encoded.attention_mask


def set_label_smoothing(model, value: float) -> None:
    """The text decoder's label smoothing (BLIP's own loss reads the module's copy, the trainer the config)."""
    model.config.text_config.label_smoothing = float(value)
    model.text_decoder.label_smoothing = float(value)


# --- a tiny BLIP built offline (tests, demo) -----------------------------------------------------------------


def build_tiny(
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
    check_preset(preset, num_vision_layers, vision_lora_layers)
    if preset == "decoder":
        return DECODER_TARGETS
    layers = last_layers(num_vision_layers, vision_lora_layers)
    return f"(?:{DECODER_TARGETS}|{VISION_LAYER_TARGETS.format(layers=layers)})"


def lora_targets(model, preset: str, vision_lora_layers: int) -> str:
    """`lora_target_regex` for this model's vision depth."""
    return lora_target_regex(preset, model.config.vision_config.num_hidden_layers, vision_lora_layers)


# --- what the decoding engine needs ------------------------------------------------------------------------------


def encode_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """What the decoder cross-attends to, once per image: the vision model's last hidden states."""
    return model.vision_model(pixel_values=pixel_values).last_hidden_state


class TextDecoder:
    """BLIP's text decoder (`BlipTextLMHeadModel`) as `fashioncap.decoding` drives it: embeddings, layers
    called through their own submodules (LoRA and parameter-gathering hooks run as usual), the LM head."""

    def __init__(self, model: torch.nn.Module):
        self.module = getattr(model, "text_decoder", model)
        config = self.module.config
        self.layers = self.module.bert.encoder.layer
        self.bos_token_id, self.eos_token_id = config.bos_token_id, config.sep_token_id
        self.pad_token_id = config.pad_token_id
        self.max_positions = config.max_position_embeddings
        self.label_smoothing = config.label_smoothing

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.module.bert.embeddings(input_ids=input_ids, position_ids=position_ids)

    @staticmethod
    def cross_keys_values(layer, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's cross-attention keys and values of image embeddings: [images, heads, tokens, d]."""
        cross = layer.crossattention.self
        return (
            split_heads(cross.key(image_embeds), cross.attention_head_size),
            split_heads(cross.value(image_embeds), cross.attention_head_size),
        )

    @staticmethod
    def layer(
        layer,
        hidden: torch.Tensor,
        self_mask: torch.Tensor,
        cross_keys: torch.Tensor,
        cross_values: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One BlipTextLayer. With `cache` ([rows, heads, slots, d] keys and values), this token's self-attention
        K/V are written at `position` and the query attends to the slots `self_mask` allows."""
        attention = layer.attention.self
        query, key, value = (
            split_heads(projection(hidden), attention.attention_head_size)
            for projection in (attention.query, attention.key, attention.value)
        )
        key, value = cached_keys_values(cache, position, key, value)
        hidden = layer.attention.output(merge_heads(attend(attention, query, key, value, self_mask)), hidden)
        cross_attention = layer.crossattention.self
        cross = grouped_cross_attention(
            cross_attention, cross_attention.query(hidden), cross_keys, cross_values
        )
        hidden = layer.crossattention.output(cross, hidden)
        return layer.feed_forward_chunk(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.module.cls(hidden)


# --- BLIP's attention through SDPA -----------------------------------------------------------------------------
# transformers 5.24 runs BLIP's attention eagerly (matmul, softmax, matmul) and refuses
# `attn_implementation="sdpa"` for BLIP (`_supports_sdpa` is False). SDPA computes the same thing in one fused
# kernel (flash/memory-efficient on CUDA, a fused loop on CPU) without keeping the attention probabilities for
# backward. Attention maps are not returned under SDPA (`output_attentions` gives None).


def _vision_attention_forward(self: BlipAttention, hidden_states: torch.Tensor, **kwargs):
    """BlipAttention.forward with SDPA: fused qkv, no mask, scale head_dim ** -0.5."""
    batch, length, width = hidden_states.shape
    qkv = (
        self.qkv(hidden_states)
        .reshape(batch, length, 3, self.num_heads, self.head_dim)
        .permute(2, 0, 3, 1, 4)
    )
    context = attend(self, qkv[0], qkv[1], qkv[2], scale=self.scale)
    return self.projection(context.transpose(1, 2).reshape(batch, length, width)), None


def _text_attention_forward(
    self: BlipTextSelfAttention,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    cache=None,
    **kwargs,
):
    """BlipTextSelfAttention.forward with SDPA; the cache handling is transformers' own, line for line."""
    query = split_heads(self.query(hidden_states), self.attention_head_size)
    is_cross_attention = encoder_hidden_states is not None
    mask = encoder_attention_mask if is_cross_attention else attention_mask
    layer_cache, reuse_cross = cache, False
    if isinstance(cache, EncoderDecoderCache):
        reuse_cross = is_cross_attention and cache.is_updated.get(self.layer_idx)
        layer_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
    if reuse_cross:
        key, value = layer_cache.layers[self.layer_idx].keys, layer_cache.layers[self.layer_idx].values
    else:
        states = encoder_hidden_states if is_cross_attention else hidden_states
        key = split_heads(self.key(states), self.attention_head_size)
        value = split_heads(self.value(states), self.attention_head_size)
        if cache is not None:
            key, value = layer_cache.update(key, value, self.layer_idx, kwargs=kwargs)
            if is_cross_attention and isinstance(cache, EncoderDecoderCache):
                cache.is_updated[self.layer_idx] = True
    return merge_heads(attend(self, query, key, value, mask)), None


_SDPA_FORWARDS = (
    (BlipAttention, _vision_attention_forward),
    (BlipTextSelfAttention, _text_attention_forward),
)


@contextlib.contextmanager
def sdpa_attention(model: torch.nn.Module):
    """Run every BLIP attention module inside `model` (PEFT-wrapped or not) through SDPA for the block: the
    vision encoder's `BlipAttention` and the text model's `BlipTextSelfAttention` (self and cross attention, KV
    cache included, so `generate` works under it).

    The instance's `forward` is shadowed, so module hooks (DeepSpeed, FSDP, PEFT) still run; nesting is safe.
    """
    patched = []
    for module in model.modules():
        forward = next((f for cls, f in _SDPA_FORWARDS if isinstance(module, cls)), None)
        if forward is not None:
            patched.append((module, module.__dict__.get("forward")))
            module.forward = types.MethodType(forward, module)
    try:
        yield model
    finally:
        for module, previous in patched:
            if previous is None:
                del module.forward
            else:
                module.forward = previous
