"""Decoding under DeepSpeed ZeRO-3 with one parameter gather per decode instead of one per module and token.

Why: ZeRO-3 partitions every weight over the ranks, and DeepSpeed's forward hooks on each submodule gather its
weights before the call and release them after. A decode calls every decoder submodule once per token, so each
token costs a collective per submodule, and every rank must take the same number of steps (`synced_gpus`), up
to the token limit, though its own samples ended sooner. Gathering the decoder once and lifting the hooks for
the decode removes both costs (TRL does the same for generation, `ds3_gather_for_generation`). Wrapping the
decode in `GatheredParameters` alone is not enough: the hooks would still release and re-gather per submodule.

Unlike TRL, which removes DeepSpeed's hooks and registers them anew on the whole model (which also resets the
parameter-fetch trace), this lifts the forward hooks of the decoded module's subtree only and puts the same
hooks back: it runs inside the training forward (the rollout), where the outer modules' hooks are mid-call.
The cost is the whole decoder's weights on every device during the decode: `zero3_gathered_decoding: false`
keeps the per-module path for a decoder that does not fit one device.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch


@contextlib.contextmanager
def gathered_without_hooks(module: torch.nn.Module, enabled: bool = True):
    """`module`'s ZeRO-3 partitioned parameters gathered on every rank for the block (a collective: every rank
    enters it), with no forward hook running inside `module` meanwhile; both restored after. No-op if not
    `enabled`. Decode only inside: the weights are not to be changed, nor gradients taken."""
    if not enabled:
        yield
        return
    import deepspeed  # only under DeepSpeed: the GPU machine and plain installs may lack it

    modules = list(module.modules())
    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        hooks = [(m._forward_pre_hooks, m._forward_hooks) for m in modules]
        for m in modules:
            m._forward_pre_hooks, m._forward_hooks = OrderedDict(), OrderedDict()
        try:
            yield
        finally:
            for m, (pre_hooks, post_hooks) in zip(modules, hooks, strict=True):
                m._forward_pre_hooks, m._forward_hooks = pre_hooks, post_hooks
