"""Image ids in error messages: enough to find them, never a wall of numbers."""

from __future__ import annotations

from collections.abc import Sequence


def describe_ids(ids: Sequence, limit: int = 5) -> str:
    """'3 image(s): 1, 2, 3' or '40 image(s): 1, 2, 3, 4, 5, ...': error messages that name ids stay short."""
    shown = ", ".join(repr(i) for i in ids[:limit])
    return f"{len(ids)} image(s): {shown}{', ...' if len(ids) > limit else ''}"
