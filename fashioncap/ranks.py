"""Decisions every rank takes together (a stop, a save): one rank's flag becomes every rank's."""

from __future__ import annotations

import torch


def agreed_by_any_rank(flag: bool, device) -> bool:
    """True on every rank when `flag` is true on at least one (one tiny all-reduce; just `flag` alone)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
