"""The report's verdict in words, at its top: which run won where its lead is clear of the noise, and what one
seed cannot settle. A lead counts only where its 95% interval clears the runner-up's (or, for a pair, clears 0);
where a study over seeds (`fashioncap study`) exists for these runs, its paired verdicts replace the one-seed
ties."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from fashioncap.scoretable import BEST, HEADLINE_METRICS, is_score, score_interval, top_marks

STUDY_FILE = "study.json"


def find_study(run_dirs: Mapping[str, Path], split: str, study_path: str | Path | None = None) -> dict | None:
    """The study of these runs: `study_path` (study.json or its folder), else OUTPUTS/study/study.json beside
    the runs' folder (`make study`'s default next to the demo's outputs/demo/); only when it scored `split` and
    compares two of the runs by name. None otherwise."""
    beside = [Path(d).resolve().parent.parent / "study" for d in run_dirs.values()]
    candidates = [Path(study_path)] if study_path else beside
    for candidate in candidates:
        path = candidate / STUDY_FILE if candidate.is_dir() else candidate
        if not path.is_file():
            continue
        study = json.loads(path.read_text(encoding="utf-8"))
        pairs = {(c["a"], c["b"]) for c in study.get("comparisons") or []}
        if study.get("split") == split and any(a in run_dirs and b in run_dirs for a, b in pairs):
            return {**study, "path": str(path)}
    return None


def _leader_line(metrics: Mapping[str, Mapping | None], metric: str, best: str) -> str | None:
    """The sentence for a best whose interval clears the runner-up's; None without both intervals (scores of
    an eval without them say nothing about the noise)."""
    scored = {n: s[metric] for n, s in metrics.items() if s and is_score(s.get(metric))}
    runner = max((n for n in scored if n != best), key=scored.get)
    if not (score_interval(metrics[best], metric) and score_interval(metrics[runner], metric)):
        return None
    return (
        f"{best} leads on {metric}: {scored[best]:.3f} vs {scored[runner]:.3f} for {runner}, "
        "their 95% intervals apart."
    )


def _pair_line(comparison: Mapping, how: str) -> str:
    a, b, metric, delta = comparison["a"], comparison["b"], comparison["metric"], comparison["delta"]
    lo, hi = comparison["ci95"]
    side = "above" if lo > 0 else "below"
    return f"{a} is {side} {b} on {metric} by {delta:+.3f} ({how}, 95% interval [{lo:+.3f}, {hi:+.3f}])."


def _apart(comparison: Mapping) -> bool:
    lo, hi = comparison["ci95"]
    return lo > 0 or hi < 0


def verdict_lines(
    metrics: Mapping[str, Mapping | None], comparisons: Sequence[Mapping] = (), study: Mapping | None = None
) -> list[str]:
    """The verdict, one sentence a line: leads clear of the runner-up's interval, paired differences whose
    interval clears 0, then the metrics one seed leaves open (or, with a study, what its seeds settled)."""
    lines, open_metrics = [], []
    for metric in HEADLINE_METRICS:
        marks = top_marks(metrics, metric)
        best = next((name for name, mark in marks.items() if mark == BEST), None)
        leader = _leader_line(metrics, metric, best) if best else None
        if leader:
            lines.append(leader)
        elif marks:
            open_metrics.append(metric)
    lines += [_pair_line(c, "paired over the same images, one seed") for c in comparisons if _apart(c)]
    if study:
        seeds = max((r.get("n_seeds", 0) for r in (study.get("runs") or {}).values()), default=0)
        paired = [c for c in study.get("comparisons") or [] if c["a"] in metrics and c["b"] in metrics]
        lines += [_pair_line(c, f"over {seeds} seeds") for c in paired if _apart(c)]
        undecided: dict[tuple[str, str], list[str]] = {}
        for c in paired:
            if not _apart(c):
                undecided.setdefault((c["a"], c["b"]), []).append(c["metric"])
        lines += [
            f"{a} and {b} are not apart on {', '.join(ms)} over {seeds} seeds (the study, {study['path']})."
            for (a, b), ms in undecided.items()
        ]
    elif open_metrics:
        lines.append(
            f"On {', '.join(open_metrics)} no run is shown apart from the others on one seed: run `make study` "
            "(several seeds, paired) before calling a winner."
        )
    if not lines and not any(metrics.values()):
        return ["No run is scored on this split yet: run `fashioncap eval` on each."]
    return lines or ["Nothing to compare: fewer than two runs have scores."]


def verdict_markdown(lines: Sequence[str]) -> str:
    return "## Verdict\n\n" + "".join(f"- {line}\n" for line in lines) + "\n"
