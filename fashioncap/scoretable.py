"""One renderer for score tables: `eval`'s metrics.md, `report`'s comparison, the demo's summary, the model card."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# The seed's table columns: what reports and model cards show.
HEADLINE_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "ALS", "SLS")


def format_score(value) -> str:
    """Four decimals; "n/a" for a metric that could not run (null) or was not computed."""
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"


def score_table(
    rows: Mapping[str, Mapping | None], metrics: Sequence[str] = HEADLINE_METRICS, label: str = "run"
) -> str:
    """Markdown, one row per name and one column per metric; a missing metric or row shows "n/a"."""
    lines = [
        f"| {label} | " + " | ".join(metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
        *(
            f"| {name} | " + " | ".join(format_score((scores or {}).get(m)) for m in metrics) + " |"
            for name, scores in rows.items()
        ),
    ]
    return "\n".join(lines) + "\n"


def unavailable_notes(metrics: Mapping) -> str:
    """One line per metric that could not run, with its reason ("" when all ran)."""
    return "".join(
        f"- {name}: n/a ({reason})\n" for name, reason in (metrics.get("unavailable") or {}).items()
    )
