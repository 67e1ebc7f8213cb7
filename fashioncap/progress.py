"""Progress of long commands (`make demo`, `make study`): 'stage k of N: WHAT (about T; M so far)', so a user
sees where a run of several minutes is and what is still to come."""

from __future__ import annotations

import time


def format_duration(seconds: float) -> str:
    """'45 s' under two minutes, '4.9 min' above."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Progress:
    """Counts the steps (`unit`s) of a command and announces each one on stdout with its expected duration
    (`where`: on what machine that was measured) and the time spent so far."""

    def __init__(self, total: int, unit: str = "stage", where: str = ""):
        self.total, self.unit, self.where, self.done = total, unit, where, 0
        self.start = time.perf_counter()

    def next(self, what: str, expected_seconds: float | None = None) -> None:
        self.done += 1
        notes = [f"about {format_duration(expected_seconds)}{self.where}"] if expected_seconds else []
        if self.done > 1:
            notes.append(f"{format_duration(time.perf_counter() - self.start)} so far")
        detail = f" ({'; '.join(notes)})" if notes else ""
        print(f"\n== {self.unit} {self.done} of {self.total}: {what}{detail} ==", flush=True)
