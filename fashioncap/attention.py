"""Attention through `torch.nn.functional.scaled_dot_product_attention` (SDPA), for any family's layers.

SDPA computes softmax(QK^T)V in one fused kernel (flash/memory-efficient on CUDA, a fused loop on CPU) without
keeping the attention probabilities for backward. The decoding engine (`fashioncap.decoding`) and a family's
own SDPA patch (BLIP's: `fashioncap.models.blip.sdpa_attention`) call `attend`.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F

# Layers that drop out functionally (BART's: `F.dropout(x, p, training=self.training)`) have no nn.Dropout module
# to switch off; `dropout_off()` switches theirs off while their modules stay in training mode.
_DROPOUT_OFF = contextvars.ContextVar("fashioncap_dropout_off", default=False)


@contextlib.contextmanager
def dropout_off():
    """Functional dropout (`functional_dropout`, and `attend` for a module whose `dropout` is a rate) off."""
    token = _DROPOUT_OFF.set(True)
    try:
        yield
    finally:
        _DROPOUT_OFF.reset(token)


def functional_dropout(states: torch.Tensor, rate: float, module: torch.nn.Module) -> torch.Tensor:
    """Dropout at `rate` while `module` trains, unless inside `dropout_off()`."""
    return F.dropout(states, rate, training=module.training and not _DROPOUT_OFF.get())


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
    """SDPA with `module`'s attention dropout while it trains (`module.dropout`: an nn.Dropout, or a rate);
    `mask`: boolean (True: attend) or additive."""
    if mask is not None and mask.is_floating_point():
        mask = mask.to(query.dtype)  # SDPA wants an additive mask in the query's dtype (autocast)
    if isinstance(module.dropout, torch.nn.Dropout):
        dropout = module.dropout.p if module.dropout.training else 0.0  # off under dropout_disabled() too
    else:
        dropout = module.dropout if module.training and not _DROPOUT_OFF.get() else 0.0
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)


def grouped_cross_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Cross-attention of rows grouped per image (image-major), each image's keys/values [images, heads, tokens,
    d] computed once: an image's rows become one long query. `query` [rows, length, heads * d] is projected."""
    rows, length, _ = query.shape
    images, _, _, head_size = keys.shape
    grouped = query.reshape(images, rows // images * length, -1, head_size).transpose(1, 2)
    return attend(module, grouped, keys, values, scale=scale).transpose(1, 2).reshape(rows, length, -1)


def cached_keys_values(
    cache: tuple[torch.Tensor, torch.Tensor] | None,
    position: torch.Tensor | None,
    key: torch.Tensor,
    value: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This token's self-attention K/V written into the preallocated cache [rows, heads, slots, d] at `position`,
    and the whole cache to attend to; without a cache (teacher forcing), K/V as they are."""
    if cache is None:
        return key, value
    cache[0].index_copy_(2, position, key)
    cache[1].index_copy_(2, position, value)
    return cache
