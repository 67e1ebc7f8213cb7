"""The Florence-2 family: transformers' native `Florence2ForConditionalGeneration` (no remote code).

A DaViT vision tower and a projector turn the image into tokens; they go, followed by the caption task prompt,
through a BART encoder; a BART decoder cross-attends to the encoder's output. For captioning the prompt is the
same for every image, so the encoder's output is the image's memory (`encode_images`), computed once per image
and shared by its H samples and beams like BLIP's vision states.

Native checkpoints (transformers format): `florence-community/Florence-2-base` (0.23B) and
`florence-community/Florence-2-large` (0.77B); `microsoft/Florence-2-*` need remote code, which fashioncap never
runs. The image processor is CLIP's PIL one (no torchvision); the decoder starts from `</s>` (BART's
decoder_start_token_id) and writes `<s> caption </s>`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    PreTrainedTokenizerFast,
)

from fashioncap.attention import (
    attend,
    cached_keys_values,
    functional_dropout,
    grouped_cross_attention,
    merge_heads,
    split_heads,
)
from fashioncap.models.lora import check_preset
from fashioncap.models.source import ModelLoadError, load_pretrained, model_config

NAME = "florence2"
DISPLAY_NAME = "Florence-2"
MODEL_TYPES = ("florence2",)
DEFAULT_MODEL = "florence-community/Florence-2-base"
CARD_CLASSES = ("Florence2ForConditionalGeneration", "Florence2Processor")
# The task token the processor expands to the caption prompt ("What does the image describe?").
CAPTION_PROMPT = "<CAPTION>"
CARD_PROMPT = CAPTION_PROMPT
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<image>"]
# The sub-config types of the first release's remote code (microsoft/Florence-2-*); the native ones are
# `florence_vision` and `bart`.
REMOTE_CODE_TYPES = {"davit", "florence2_language"}

# `decoder`: every attention projection (self and cross) and feed-forward layer of the BART decoder;
# `decoder+vision`: plus the attention and MLP projections of the last N DaViT blocks, counted across its stages
# (Florence-2-base/large: 1 + 1 + 9 + 1 blocks; each block is a spatial (window attention) and a channel block).
DECODER_TARGETS = (
    r"model\.language_model\.decoder\.layers\.\d+\.(?:(?:self_attn|encoder_attn)\.(?:q_proj|k_proj|v_proj|out_proj)"
    r"|fc1|fc2)"
)
VISION_BLOCK_TARGETS = (
    r"model\.vision_tower\.blocks\.{blocks}\.(?:(?:spatial_block\.window_attn|channel_block\.channel_attn)"
    r"\.(?:qkv|proj)|(?:spatial_block|channel_block)\.ffn\.(?:fc1|fc2))"
)


# --- loading ----------------------------------------------------------------------------------------------------


def load_processor(name_or_path: str):
    """Florence-2's processor with CLIP's PIL image processor (the default one needs torchvision)."""
    image_processor = CLIPImageProcessorPil.from_pretrained(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)


def refuse_remote_code_format(source: str) -> None:
    """One line for a checkpoint in the format of microsoft/Florence-2-*'s own code (its sub-configs `davit` and
    `florence2_language`), which transformers' native classes cannot load and fashioncap never runs."""
    config = model_config(source)
    kinds = {(config.get(part) or {}).get("model_type") for part in ("vision_config", "text_config")}
    if kinds & REMOTE_CODE_TYPES:
        raise ModelLoadError(
            f"model {source!r} is Florence-2 in the remote-code format of the first release (microsoft/"
            "Florence-2-*), which fashioncap never runs: use its conversion to transformers' native format, "
            "florence-community/Florence-2-base or florence-community/Florence-2-large (or their -ft variants)"
        )


def load_model_and_processor(source: str, dtype: torch.dtype | str | None = None):
    """Florence-2 from a local dir or a Hub id that can be had, in transformers' native format only."""
    refuse_remote_code_format(source)
    model, processor = load_pretrained(
        Florence2ForConditionalGeneration, load_processor, source, dtype, DISPLAY_NAME
    )
    configure_generation_ids(model, processor.tokenizer)
    set_caption_prompt(model, processor)
    return model, processor


def configure_generation_ids(model, tokenizer) -> None:
    """Pad/start/end ids on the configs `generate` and the Trainer read, checked against the tokenizer; no
    forced or banned tokens, so `generate` and the engine decode alike."""
    text = model.config.text_config
    for config in (model.config, model.generation_config):
        config.pad_token_id, config.eos_token_id = text.pad_token_id, text.eos_token_id
        config.decoder_start_token_id = text.decoder_start_token_id
    model.generation_config.bos_token_id = text.bos_token_id
    model.generation_config.forced_bos_token_id = None
    model.generation_config.forced_eos_token_id = None
    model.generation_config.no_repeat_ngram_size = None
    if tokenizer.pad_token_id != text.pad_token_id or tokenizer.eos_token_id != text.eos_token_id:
        raise ModelLoadError(
            f"tokenizer and model disagree on special tokens: pad {tokenizer.pad_token_id} vs {text.pad_token_id}, "
            f"</s> {tokenizer.eos_token_id} vs {text.eos_token_id}"
        )


def set_caption_prompt(model, processor, prompt: str = CAPTION_PROMPT) -> None:
    """The caption prompt's token ids, `<s> prompt </s>` as the processor builds them after the image tokens (a
    task token such as `<CAPTION>` expanded), kept on the model for `encode_images`."""
    (text,) = processor._construct_prompts([prompt])
    tokenizer = processor.tokenizer
    ids = tokenizer(tokenizer.bos_token + text + tokenizer.eos_token, add_special_tokens=False).input_ids
    model.caption_prompt_ids = torch.tensor(ids)


def owns_processor(processor) -> bool:
    return isinstance(processor, Florence2Processor)


def set_label_smoothing(model, value: float) -> None:
    model.config.text_config.label_smoothing = float(value)


def caption_inputs(tokenizer, captions: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`</s> <s> caption </s>` per row: BART's decoder start, then what the decoder writes; padded with <pad>."""
    encoded = tokenizer(
        [tokenizer.bos_token + c + tokenizer.eos_token for c in captions], add_special_tokens=False,
        padding="longest", truncation=True, max_length=max_length - 1, return_tensors="pt",
    )  # fmt: skip
    start = torch.full((len(captions), 1), tokenizer.eos_token_id, dtype=torch.long)
    ones = torch.ones_like(start)
    return torch.cat([start, encoded.input_ids], 1), torch.cat([ones, encoded.attention_mask], 1)


# --- a tiny Florence-2 built offline (tests, demo) -----------------------------------------------------------


TINY_VISION = dict(
    depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True],
    embed_dim=[32, 64], num_heads=[2, 4], num_groups=[2, 4], window_size=4, projection_dim=96, drop_path_rate=0.0,
)  # fmt: skip
TINY_TEXT = dict(
    d_model=96, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=192, decoder_ffn_dim=192,
)  # fmt: skip


def build_tiny(words: Iterable[str], image_size: int = 64, max_positions: int = 128, seed: int = 0):
    """A ~0.5M-parameter Florence-2 (two DaViT stages, a 1-layer BART encoder and 2-layer decoder) with a
    whole-word vocabulary: the synthetic set's stand-in, trainable on 2 CPU cores."""
    return build_random(words, TINY_VISION, TINY_TEXT, image_size, max_positions, seed=seed)


def build_random(
    words: Iterable[str],
    vision: dict,
    text: dict,
    image_size: int,
    max_positions: int,
    vocab_size: int | None = None,
    seed: int = 0,
):
    """A Florence-2 of the given DaViT (`vision`) and BART (`text`) shape with random weights, built offline, and
    its processor: a whole-word vocabulary of `words` (padded with unused tokens to `vocab_size`, so that the
    LM head has a real checkpoint's width) and CLIP's PIL image processor at `image_size`. The tiny stand-in,
    and the benchmarks' real shapes (bench/)."""
    tokens = [*SPECIAL_TOKENS, *sorted(set(words) - set(SPECIAL_TOKENS))]
    tokens += [f"<unused{i}>" for i in range((vocab_size or len(tokens)) - len(tokens))]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, model_max_length=max_positions,
    )  # fmt: skip
    stride = math.prod(vision["patch_stride"])  # the tower's output grid: image_size / stride on a side
    config = Florence2Config(
        vision_config={**vision, "max_position_embeddings": image_size // stride},
        text_config=dict(
            model_type="bart", vocab_size=len(vocab), max_position_embeddings=max_positions,
            pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
            decoder_start_token_id=vocab["</s>"], forced_eos_token_id=None, **text,
        ),
        image_token_id=vocab["<image>"],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=False, image_seq_length=(image_size // stride) ** 2 + 1,
    )  # fmt: skip
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    configure_generation_ids(model, tokenizer)
    set_caption_prompt(model, processor)
    return model, processor


# --- LoRA presets ---------------------------------------------------------------------------------------------


def lora_targets(model, preset: str, vision_lora_layers: int) -> str:
    """The presets in Florence-2's module names; the vision blocks are counted across the DaViT stages."""
    blocks = [
        f"{stage}\\.{index}"
        for stage, depth in enumerate(model.config.vision_config.depths)
        for index in range(depth)
    ]
    check_preset(preset, len(blocks), vision_lora_layers)
    if preset == "decoder":
        return DECODER_TARGETS
    last = "(?:" + "|".join(blocks[len(blocks) - vision_lora_layers :]) + ")"
    return f"(?:{DECODER_TARGETS}|{VISION_BLOCK_TARGETS.format(blocks=last)})"


# --- what the decoding engine needs ------------------------------------------------------------------------------


def encode_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The BART encoder's output over [image tokens, caption prompt]: what the decoder cross-attends to."""
    inner = model.model
    features = inner.get_image_features(pixel_values).pooler_output
    prompt = model.caption_prompt_ids.to(pixel_values.device)
    prompt_embeds = inner.get_input_embeddings()(prompt).to(features.dtype)
    embeds = torch.cat([features, prompt_embeds.expand(features.size(0), -1, -1)], 1)
    return inner.language_model.encoder(inputs_embeds=embeds).last_hidden_state


class TextDecoder:
    """Florence-2's BART decoder and LM head as `fashioncap.decoding` drives them (post-LayerNorm layers)."""

    def __init__(self, model: torch.nn.Module):
        self.decoder = model.model.language_model.decoder
        self.lm_head = model.lm_head
        # what decoding runs, as one module (dropout control, ZeRO-3's gathering): not the vision tower or encoder
        self.module = torch.nn.ModuleList([self.decoder, self.lm_head])
        config = model.config.text_config
        self.layers = self.decoder.layers
        self.bos_token_id, self.eos_token_id = config.decoder_start_token_id, config.eos_token_id
        self.pad_token_id = config.pad_token_id
        self.max_positions = config.max_position_embeddings
        self.label_smoothing = getattr(config, "label_smoothing", 0.0)

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        decoder = self.decoder
        if position_ids is None:
            position_ids = torch.arange(input_ids.size(1), device=input_ids.device)
        positions = decoder.embed_positions(input_ids, 0, position_ids=position_ids.view(-1))
        hidden = decoder.layernorm_embedding(decoder.embed_tokens(input_ids) + positions)
        return functional_dropout(hidden, decoder.dropout, decoder)

    @staticmethod
    def cross_keys_values(layer, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cross = layer.encoder_attn
        return (
            split_heads(cross.k_proj(image_embeds), cross.head_dim),
            split_heads(cross.v_proj(image_embeds), cross.head_dim),
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
        """One BartDecoderLayer (self-attention, cross-attention, feed-forward, each add-then-LayerNorm)."""
        attention = layer.self_attn
        query, key, value = (
            split_heads(projection(hidden), attention.head_dim)
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        key, value = cached_keys_values(cache, position, key, value)
        attended = attention.out_proj(
            merge_heads(attend(attention, query, key, value, self_mask, attention.scaling))
        )
        hidden = layer.self_attn_layer_norm(hidden + functional_dropout(attended, layer.dropout, layer))
        cross_attention = layer.encoder_attn
        cross = cross_attention.out_proj(
            grouped_cross_attention(
                cross_attention,
                cross_attention.q_proj(hidden),
                cross_keys,
                cross_values,
                cross_attention.scaling,
            )
        )
        hidden = layer.encoder_attn_layer_norm(hidden + functional_dropout(cross, layer.dropout, layer))
        inner = functional_dropout(layer.activation_fn(layer.fc1(hidden)), layer.activation_dropout, layer)
        return layer.final_layer_norm(hidden + functional_dropout(layer.fc2(inner), layer.dropout, layer))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
