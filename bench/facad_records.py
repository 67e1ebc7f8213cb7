"""FACAD text records for the benchmarks, from this repository alone (`make bench` needs nothing beside a clone).

The repository's slice (tests/data/facad_records.jsonl: 400 records {"id", "title", "description"}) is extended
to any count with made records: made record k takes the description of slice record k mod 400 followed by the
title of another one, so the captions stay FACAD-like and (almost all) distinct, and a cold cache stays cold.
"""

from __future__ import annotations

import json
from pathlib import Path

SLICE = Path(__file__).resolve().parents[1] / "tests/data/facad_records.jsonl"


def facad_records(n: int | None = None) -> list[dict]:
    """The slice's records, then made ones up to `n` (all of the slice when `n` is None), ids unique."""
    records = [json.loads(line) for line in SLICE.read_text(encoding="utf-8").splitlines()]
    size = len(records)
    for k in range(size, n or 0):
        base, other = records[k % size], records[(k + k // size) % size]
        made = f"{base['description']} {other['title']}"
        records.append(
            {"id": max(r["id"] for r in records[:size]) + k, "title": base["title"], "description": made}
        )
    return records[:n]
