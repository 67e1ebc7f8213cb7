"""One renderer for score tables: `eval`'s metrics.md, `report`'s comparison, the demo's summary, the model card."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

# The seed's table columns: what reports and model cards show.
HEADLINE_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "ALS", "SLS")


def is_score(value) -> bool:
    """A number (null, a missing metric or a flag is none)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_score(value) -> str:
    """Four decimals; "n/a" for a metric that could not run (null) or was not computed."""
    return f"{value:.4f}" if is_score(value) else "n/a"


def score_table(
    rows: Mapping[str, Mapping | None],
    metrics: Sequence[str] = HEADLINE_METRICS,
    label: str = "run",
    cell: Callable[[str, str], str] | None = None,
) -> str:
    """Markdown, one row per name and one column per metric; a missing metric or row shows "n/a".
    `cell(name, metric)` writes a cell instead of the score alone."""
    cell = cell or (lambda name, metric: format_score((rows[name] or {}).get(metric)))
    lines = [
        f"| {label} | " + " | ".join(metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
        *(f"| {name} | " + " | ".join(cell(name, m) for m in metrics) + " |" for name in rows),
    ]
    return "\n".join(lines) + "\n"


def unavailable_notes(metrics: Mapping) -> str:
    """One line per metric that could not run, with its reason ("" when all ran)."""
    return "".join(
        f"- {name}: n/a ({reason})\n" for name, reason in (metrics.get("unavailable") or {}).items()
    )


# --- which run is best, and how sure: the report's marks ---------------------------------------------------

BEST, TIE, BELOW_BASE = "best", "tie", "below base"


def _number(scores: Mapping | None, metric: str) -> float | None:
    value = (scores or {}).get(metric)
    return value if is_score(value) else None


def score_interval(scores: Mapping | None, metric: str) -> tuple[float, float] | None:
    """The 95% bootstrap interval over images that `eval` records in metrics.json ("ci95"), or None."""
    interval = ((scores or {}).get("ci95") or {}).get(metric)
    return (float(interval[0]), float(interval[1])) if interval else None


def top_marks(rows: Mapping[str, Mapping | None], metric: str) -> dict[str, str]:
    """name -> BEST or TIE for the runs at the top of `metric` (nothing when fewer than two runs have it).

    The highest score is the best; another run whose 95% interval overlaps the best's is a tie (which is higher
    is not settled), and the best is then a tie too. Without both intervals only an equal score ties."""
    scored = {name: value for name in rows if (value := _number(rows[name], metric)) is not None}
    if len(scored) < 2:
        return {}
    best = max(scored, key=scored.get)
    best_interval = score_interval(rows[best], metric)

    def ties(name: str) -> bool:
        interval = score_interval(rows[name], metric)
        if interval and best_interval:
            return interval[1] >= best_interval[0] and interval[0] <= best_interval[1]
        return scored[name] == scored[best]

    tied = [name for name in scored if name != best and ties(name)]
    return {name: TIE for name in (best, *tied)} if tied else {best: BEST}


def below_base(rows: Mapping[str, Mapping | None], metric: str, base: str | None) -> set[str]:
    """The runs other than `base` that score lower than it on `metric` (the model they were trained from:
    fine-tuning lost what it had)."""
    base_score = _number(rows.get(base), metric) if base else None
    if base_score is None:
        return set()
    return {
        name
        for name, scores in rows.items()
        if name != base and (score := _number(scores, metric)) is not None and score < base_score
    }


def score_marks(
    rows: Mapping[str, Mapping | None], metrics: Sequence[str], base: str | None, ties: bool = True
) -> dict[str, dict[str, list[str]]]:
    """name -> metric -> its marks (BEST or TIE first, then BELOW_BASE); `ties` false leaves TIE out (a study
    over seeds says what one seed's ties cannot)."""
    marks: dict[str, dict[str, list[str]]] = {name: {m: [] for m in metrics} for name in rows}
    for metric in metrics:
        for name, mark in top_marks(rows, metric).items():
            if ties or mark != TIE:
                marks[name][metric].append(mark)
        for name in below_base(rows, metric, base):
            marks[name][metric].append(BELOW_BASE)
    return marks


def format_interval(interval: tuple[float, float] | None) -> str:
    return f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""


def marked_score_table(
    rows: Mapping[str, Mapping | None],
    metrics: Sequence[str] = HEADLINE_METRICS,
    base: str | None = None,
    ties: bool = True,
) -> str:
    """`score_table` with each score's 95% interval and its marks; bold only for a best whose interval clears
    every other run's (a tie is no winner)."""
    marks = score_marks(rows, metrics, base, ties)

    def cell(name: str, metric: str) -> str:
        scores, own = rows[name], marks[name][metric]
        value = format_score((scores or {}).get(metric))
        value = f"**{value}**" if BEST in own else value
        return " ".join(
            part for part in (value, format_interval(score_interval(scores, metric)), ", ".join(own)) if part
        )

    return score_table(rows, metrics, cell=cell)


def marks_legend(rows: Mapping[str, Mapping | None], base: str | None) -> str:
    """What the cells of `marked_score_table` say, in one paragraph."""
    if any(score_interval(scores, m) for scores in rows.values() for m in HEADLINE_METRICS):
        parts = [
            "Each cell: the score [its 95% bootstrap interval over the images]; bold: a best.",
            f"{BEST}: the highest score, its interval clear of every other run's;",
            f"{TIE}: the highest score and the runs whose intervals overlap it: which is higher is not settled.",
        ]
    else:
        parts = [f"Bold: a best. {BEST}: the highest score; {TIE}: equal highest scores."]
    if base:
        parts.append(f"{BELOW_BASE}: lower than {base}, the model the other runs were trained from.")
    return " ".join(parts)


def unavailable_lines(rows: Mapping[str, Mapping | None]) -> list[str]:
    """One line per metric and reason it could not run ("unavailable" in metrics.json), naming the runs."""
    reasons: dict[tuple[str, str], list[str]] = {}
    for name, scores in rows.items():
        for metric, reason in ((scores or {}).get("unavailable") or {}).items():
            reasons.setdefault((metric, reason), []).append(name)
    evaluated = sum(1 for scores in rows.values() if scores)
    return [
        f"{metric} is n/a for {'every run' if len(names) == evaluated > 1 else ', '.join(names)}: {reason}"
        for (metric, reason), names in reasons.items()
    ]
