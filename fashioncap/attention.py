"""BLIP's attention through `torch.nn.functional.scaled_dot_product_attention` (SDPA).

transformers 5.24 runs BLIP's attention eagerly (matmul, softmax, matmul) and refuses
`attn_implementation="sdpa"` for BLIP (`_supports_sdpa` is False). SDPA computes the same thing in one fused
kernel (flash/memory-efficient on CUDA, a fused loop on CPU) without keeping the attention probabilities for
backward.

`sdpa_attention(model)` switches the stock modules for the duration of a block: the vision encoder's
`BlipAttention` and the text model's `BlipTextSelfAttention` (self and cross attention, KV cache included, so
`generate` works under it). `fashioncap.decoding` calls `attend` directly. Attention maps are not returned
under SDPA (`output_attentions` gives None).
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.blip.modeling_blip import BlipAttention
from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention


def split_heads(states: torch.Tensor, head_size: int) -> torch.Tensor:
    """[rows, length, heads * head_size] -> [rows, heads, length, head_size]."""
    return states.view(*states.shape[:-1], -1, head_size).transpose(1, 2)


def merge_heads(states: torch.Tensor) -> torch.Tensor:
    """[rows, heads, length, head_size] -> [rows, length, heads * head_size]."""
    return states.transpose(1, 2).flatten(2)


def attend(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA with `module`'s attention dropout while it trains; `mask`: boolean (True: attend) or additive."""
    if mask is not None and mask.is_floating_point():
        mask = mask.to(query.dtype)  # SDPA wants an additive mask in the query's dtype (autocast)
    dropout = module.dropout.p if module.dropout.training else 0.0  # off under dropout_disabled() too
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)


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
    """Run every BLIP attention module inside `model` (PEFT-wrapped or not) through SDPA for the block.

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
