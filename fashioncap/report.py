"""Compare runs the way the seed did, from the files `train` and `eval` leave in each run (`fashioncap report`).

OUT/comparison.md      the seed-style table (BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE, ALS, SLS) per run
OUT/report.html        one self-contained page: the table, sample test images (embedded) with the reference
                       and each run's caption side by side (the seed's "human evaluation" view), the curves
                       and each RL run's first and last table of sampled captions (RUN/completions.jsonl)
OUT/curves/<run>.png   training curves (losses, rewards) from RUN/trainer_state.json
OUT/summary.json       {"runs": {run name: RUN/eval/<split>/metrics.json},
                        "comparisons": [{"a", "b", "metric", "delta", "ci95"}, ...]}: paired differences of
                       each RL trial and its MLE twin, and of each --compare pair
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

from fashioncap import rundir
from fashioncap.completions import read_completions, table_rows
from fashioncap.data.coco import references_file
from fashioncap.data.images import ImageProblem, open_rgb
from fashioncap.errors import ConfigError, MissingPathError, missing_path
from fashioncap.io_utils import safe_join, write_bytes_atomic, write_json_atomic, write_text_atomic
from fashioncap.scoretable import (
    BEST,
    HEADLINE_METRICS,
    format_interval,
    format_score,
    marked_score_table,
    marks_legend,
    score_interval,
    score_marks,
    unavailable_lines,
)
from fashioncap.verdict import find_study, verdict_lines, verdict_markdown

logger = logging.getLogger(__name__)

CURVES = ("loss", "loss/mle", "loss/rl", "reward/total", "reward/als", "reward/sls")
THUMBNAIL = 256


def run_names(run_dirs: list[str]) -> dict[str, Path]:
    """Name each run by its directory, adding parent folders only where two runs would share a name."""
    paths = [Path(d).resolve() for d in run_dirs]
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth >= max(len(p.parts) for p in paths):
            return dict(zip(names, paths, strict=True))
        depth += 1


# --- the table ----------------------------------------------------------------------------------------------


def comparison_table(
    metrics: dict[str, dict | None],
    split: str = rundir.DEFAULT_SPLIT,
    evaluated: dict[str, list[str]] | None = None,
    base: str | None = None,
    ties: bool = True,
) -> str:
    """Markdown, one row per run with its scores on `split`, their 95% intervals and marks (best, tie, below
    `base`), what the marks say, and why a metric is n/a. A metric that could not run (or a run not evaluated
    on `split`) shows "n/a", and a note names the runs not evaluated on `split` and the splits they were
    (`evaluated`: run name -> splits): scores of another split are never shown as this split's."""
    missing = [
        name + (f" (evaluated on {', '.join(evaluated[name])} only)" if (evaluated or {}).get(name) else "")
        for name, scores in metrics.items()
        if scores is None
    ]
    note = (
        f"\nNot evaluated on the {split} split (no {rundir.EVAL_DIR}/{split}/{rundir.METRICS}; run "
        f"`fashioncap eval --split {split}`): {', '.join(missing)}\n"
        if missing
        else ""
    )
    unavailable = "".join(f"- {line}\n" for line in unavailable_lines(metrics))
    return (
        marked_score_table(metrics, HEADLINE_METRICS, base, ties)
        + f"\n{marks_legend(metrics, base)}\n"
        + (f"\n{unavailable}" if unavailable else "")
        + note
    )


def base_run(run_dirs: dict[str, Path]) -> str | None:
    """The reported run the others were trained from (their adapter's base, else their recipe's
    model_name_or_path), or None."""
    by_path = {Path(run_dir).resolve(): name for name, run_dir in run_dirs.items()}
    for name, run_dir in run_dirs.items():
        recipe_model = ((rundir.run_config(run_dir) or {}).get("model") or {}).get("model_name_or_path")
        start = rundir.adapter_base(run_dir) or recipe_model
        base = by_path.get(Path(start).resolve()) if start else None
        if base and base != name:
            return base
    return None


# --- paired comparisons and caption health ------------------------------------------------------------------

# Each RL trial against its MLE twin (the same LoRA without REINFORCE), compared when both are reported.
DEFAULT_PAIRS = (("trial2", "trial1"), ("trial4", "trial3"), ("trial5", "trial3"), ("trial6", "trial1"))
HEALTH_COLUMNS = {
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "vocabulary_size": "vocabulary",
    "repeated_trigram_share": "repeat a trigram",
    "length_limit_share": "hit the length limit",
    "mean_length": "words",
    "reference_mean_length": "reference words",
    "top5_share": "top-5 captions' share",
    "collapsed": "collapsed",  # repetition or runs to the length limit (fashioncap.metrics.health)
    "template_reuse": "template reuse",
}


def comparison_pairs(names, compare=()) -> list[tuple[str, str]]:
    """The default pairs whose runs are both present, then the asked-for ones; unknown names are an error."""
    names = list(names)
    for a, b in compare:
        unknown = [n for n in (a, b) if n not in names]
        if unknown:
            raise ConfigError(
                f"--compare {a} {b}: no run named {', '.join(unknown)} (runs: {', '.join(names)})"
            )
    defaults = [(a, b) for a, b in DEFAULT_PAIRS if a in names and b in names]
    return list(dict.fromkeys([*defaults, *map(tuple, compare)]))


def paired_comparisons(run_dirs: dict[str, Path], pairs, split: str) -> tuple[list[dict], list[str]]:
    """({"a", "b", "metric", "delta", "ci95"} per headline metric of each pair: a paired bootstrap over the
    images both runs scored, from their per-image scores), and a note for each pair that could not be
    compared."""
    from fashioncap.metrics import compare_runs

    comparisons, notes = [], []
    for a, b in pairs:
        per_image = {name: rundir.eval_per_image(run_dirs[name], split) for name in (a, b)}
        lacking = [name for name, scores in per_image.items() if scores is None]
        if lacking:
            notes.append(f"{a} vs {b}: no per-image scores of {', '.join(lacking)} (rerun `fashioncap eval`)")
            continue
        try:
            deltas = compare_runs(per_image[a], per_image[b])
        except ValueError as err:
            notes.append(f"{a} vs {b}: {err}")
            continue
        comparisons += [{"a": a, "b": b, "metric": m, **deltas[m]} for m in HEADLINE_METRICS if m in deltas]
    return comparisons, notes


def excludes_zero(interval) -> bool:
    return interval[0] > 0 or interval[1] < 0


def comparison_cells(comparison: dict) -> list[str]:
    a, b, (lo, hi) = comparison["a"], comparison["b"], comparison["ci95"]
    verdict = f"yes: {a if lo > 0 else b} higher" if excludes_zero((lo, hi)) else "no"
    return [
        f"{a} - {b}",
        comparison["metric"],
        f"{comparison['delta']:+.4f}",
        f"[{lo:+.4f}, {hi:+.4f}]",
        verdict,
    ]


COMPARISON_HEADER = ["a - b", "metric", "delta", "95% interval", "excludes 0"]


def _health_cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}" if isinstance(value, float) else "n/a"


def _health_rows(metrics: dict[str, dict | None]) -> list[list[str]]:
    return [
        [name, *(_health_cell(scores["health"].get(key)) for key in HEALTH_COLUMNS)]
        for name, scores in metrics.items()
        if scores and scores.get("health")
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _html_table(header: list[str], rows: list[list[str]], css_class: str = "") -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    opening = f'<table class="{css_class}">' if css_class else "<table>"
    return f"{opening}<tr>{head}</tr>{body}</table>"


PAIRED_HEADING = "Paired differences (a - b on the same images; 95% bootstrap interval over the images)"
HEALTH_HEADING = "Caption health (distinct n-grams over all n-grams; shares of the captions)"


def paired_and_health_markdown(
    metrics: dict[str, dict | None], comparisons: list[dict], notes: list[str]
) -> str:
    """The comparison.md sections after the score table: caption health per run, paired differences."""
    parts = []
    health = _health_rows(metrics)
    if health:
        parts.append(f"\n## {HEALTH_HEADING}\n\n" + markdown_table(["run", *HEALTH_COLUMNS.values()], health))
    if comparisons or notes:
        rows = [comparison_cells(c) for c in comparisons]
        parts.append(f"\n## {PAIRED_HEADING}\n\n" + (markdown_table(COMPARISON_HEADER, rows) if rows else ""))
        parts.extend(f"\n- {note}" for note in notes)
    return "".join(parts)


# --- training curves ----------------------------------------------------------------------------------------


def plot_curves(trainer_state: dict, title: str) -> bytes | None:
    """A PNG with one panel per logged curve (vs step), or None when the log has none of them."""
    history = trainer_state.get("log_history") or []
    series = {
        key: [(row["step"], row[key]) for row in history if key in row and "step" in row] for key in CURVES
    }
    series = {key: points for key, points in series.items() if points}
    if not series:
        return None
    columns = min(3, len(series))
    rows = -(-len(series) // columns)
    figure = Figure(figsize=(4 * columns, 3 * rows), layout="constrained")
    figure.suptitle(title)
    for axes, (key, points) in zip(
        figure.subplots(rows, columns, squeeze=False).flat, series.items(), strict=False
    ):
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, marker="." if len(steps) < 30 else None)
        axes.set_title(key)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    for axes in figure.axes[len(series) :]:
        axes.set_visible(False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# --- samples ------------------------------------------------------------------------------------------------


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _thumbnail(path: Path) -> str | None:
    """The image as an embedded PNG, at most THUMBNAIL pixels a side; None when it cannot be read."""
    try:
        image = open_rgb(path, draft=THUMBNAIL)
    except ImageProblem as err:
        logger.warning("report: cannot show %s: %s", path, err)
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _data_uri(buffer.getvalue())


def sample_rows(data_dir: Path, split: str, predictions: dict[str, dict], samples: int) -> list[dict]:
    """`samples` test images spread evenly over the split: image, references, each run's caption."""
    coco = json.loads(references_file(data_dir, split).read_text(encoding="utf-8"))
    references: dict[int, list[str]] = {}
    for ann in coco["annotations"]:
        references.setdefault(ann["image_id"], []).append(ann["caption"])
    images = [im for im in coco["images"] if im["id"] in references]
    chosen = images[:: max(1, len(images) // samples)][:samples] if samples > 0 else []
    return [
        {
            "image_id": im["id"],
            "image": _thumbnail(safe_join(data_dir / "images", im["file_name"])),
            "references": references[im["id"]],
            "captions": {name: preds.get(im["id"]) for name, preds in predictions.items()},
        }
        for im in chosen
    ]


# --- the page -----------------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 6px 10px; vertical-align: top; text-align: left; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.ref { color: #555; font-size: 0.9em; max-width: 22em; }
td.cap { max-width: 18em; }
img.sample { max-width: 160px; }
img.curves { max-width: 100%; display: block; margin-bottom: 1em; }
span.ci { color: #666; font-size: 0.85em; }
span.mark { color: #a40; font-size: 0.85em; }
ol.refs { margin: 0; padding-left: 1.4em; }
ol.refs li + li { border-top: 1px dotted #ccc; }
table.completions { table-layout: fixed; width: 100%; max-width: 1100px; font-size: 0.85em; }
table.completions td, table.completions th { overflow-wrap: anywhere; padding: 3px 5px; }
"""


def html_score_cell(scores: dict | None, metric: str, marks: list[str]) -> str:
    """A score cell of the page: the score (bold when best or tied), its interval and its marks."""
    value = format_score((scores or {}).get(metric))
    value = f"<strong>{value}</strong>" if BEST in marks else value
    interval = format_interval(score_interval(scores, metric))
    extra = "".join(
        f' <span class="{cls}">{html.escape(text)}</span>'
        for cls, text in (("ci", interval), ("mark", ", ".join(marks)))
        if text
    )
    return f'<td class="num">{value}{extra}</td>'


def render_html(
    metrics: dict,
    rows: list[dict],
    curves: dict[str, bytes | None],
    split: str,
    comparisons: list[dict] = (),
    notes: list[str] = (),
    base: str | None = None,
    completions: str = "",
    verdict: Sequence[str] = (),
    ties: bool = True,
) -> str:
    esc = html.escape
    names = list(metrics)
    head = "".join(f"<th>{esc(m)}</th>" for m in HEADLINE_METRICS)
    marks = score_marks(metrics, HEADLINE_METRICS, base, ties)
    score_rows = "".join(
        f"<tr><td>{esc(name)}</td>"
        + "".join(html_score_cell(scores, m, marks[name][m]) for m in HEADLINE_METRICS)
        + "</tr>"
        for name, scores in metrics.items()
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>fashioncap report</title><style>{STYLE}</style>",
        "</head><body><h1>fashioncap: run comparison</h1>",
        '<h2>Verdict</h2><ul class="verdict">'
        + "".join(f"<li>{esc(line)}</li>" for line in verdict)
        + "</ul>",
        f"<h2>Scores on the {esc(split)} split</h2><table><tr><th>run</th>{head}</tr>{score_rows}</table>",
        f"<p>{esc(marks_legend(metrics, base))}</p>",
        *(f'<p class="unavailable">{esc(line)}</p>' for line in unavailable_lines(metrics)),
    ]
    health = _health_rows(metrics)
    if health:
        parts.append(
            f"<h2>{esc(HEALTH_HEADING)}</h2>" + _html_table(["run", *HEALTH_COLUMNS.values()], health)
        )
    if comparisons or notes:
        parts.append(f"<h2>{esc(PAIRED_HEADING)}</h2>")
        parts.append(_html_table(COMPARISON_HEADER, [comparison_cells(c) for c in comparisons]))
        parts.extend(f"<p>{esc(note)}</p>" for note in notes)
    if rows:
        run_heads = "".join(f"<th>{esc(n)}</th>" for n in names)
        parts.append(f"<h2>Samples</h2><table><tr><th>image</th><th>references</th>{run_heads}</tr>")
        for row in rows:
            image = (
                f'<img class="sample" src="{row["image"]}" alt="image {row["image_id"]}">'
                if row["image"]
                else "(unreadable)"
            )
            refs = '<ol class="refs">' + "".join(f"<li>{esc(r)}</li>" for r in row["references"]) + "</ol>"
            caps = "".join(f'<td class="cap">{esc(row["captions"][n] or "—")}</td>' for n in names)
            parts.append(f'<tr><td>{image}<br>#{row["image_id"]}</td><td class="ref">{refs}</td>{caps}</tr>')
        parts.append("</table>")
    parts.append(completions)
    parts.append("<h2>Training curves</h2>")
    for name, png in curves.items():
        body = (
            f'<img class="curves" src="{_data_uri(png)}" alt="training curves of {esc(name)}">'
            if png
            else "<p>no training log</p>"
        )
        parts.append(f"<h3>{esc(name)}</h3>{body}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def completions_html(run_dirs: dict[str, Path]) -> str:
    """Each RL run's first and last table of sampled captions (RUN/completions.jsonl), one under the other: what
    the rewards did to the captions. Empty when no run logged any."""
    esc = html.escape
    parts = []
    for name, run_dir in run_dirs.items():
        tables = read_completions(run_dir)
        if not tables:
            continue
        shown = [tables[0], tables[-1]] if len(tables) > 1 else tables
        parts.append(f"<h3>{esc(name)}</h3>")
        for table in shown:  # one under the other, each as wide as the window allows: a 1200 px window fits
            which = "first" if table is shown[0] else "last"
            parts.append(f"<h4>{which} table (step {table['step']})</h4>")
            parts.append(_html_table(*table_rows(table), css_class="completions"))
    if not parts:
        return ""
    return (
        "<h2>Sampled captions during RL (first and last logged tables)</h2>"
        "<p>Each image's H sampled captions with each reward, the total, the baseline and the advantage "
        "(RUN/completions.jsonl, every log_completions_steps steps).</p>" + "".join(parts)
    )


def _data_dir_of(run_dirs: dict[str, Path]) -> Path | None:
    """The data dir the runs were trained on, from their recipe, when it is a local dir."""
    for run_dir in run_dirs.values():
        config = rundir.run_config(run_dir) or {}
        data_dir = (config.get("data") or {}).get("data_dir")
        if data_dir and Path(data_dir, "annotations").is_dir():
            return Path(data_dir)
    return None


def write_report(
    runs: dict[str, str | Path],
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    split: str = "test",
    samples: int = 12,
    compare=(),
    study_path: str | Path | None = None,
) -> dict:
    """Write the table, HTML page, curve PNGs and summary.json for `runs` (name -> run dir) into `out_dir`.

    Returns {"metrics": {name: metrics of `split` or None}, "table": the comparison, "sections": the caption
    health and paired differences (Markdown), "comparisons": [...], "files": [paths written]}. The pairs
    compared are `DEFAULT_PAIRS` present among the runs, then `compare` ((a, b) run names). The sample images
    come from `data_dir` (default: the runs' recipe data dir); without one the page has none. The verdict
    ("verdict": its lines) leads both; a study of these runs (`verdict.find_study`, `study_path`) replaces
    the one-seed ties with its paired verdicts over seeds.
    """
    out_dir = Path(out_dir)
    run_dirs = {name: Path(d) for name, d in runs.items()}
    for run_dir in run_dirs.values():
        if not run_dir.is_dir():
            raise missing_path("run dir", run_dir)
        if rundir.run_config(run_dir) is None and not rundir.evaluated_splits(run_dir):
            raise MissingPathError(
                f"{run_dir} is not a run: it has neither {rundir.RUN_CONFIG} (from `fashioncap train`) nor "
                f"{rundir.EVAL_DIR}/<split>/{rundir.METRICS} (from `fashioncap eval`)"
            )
    metrics = {name: rundir.eval_metrics(d, split) for name, d in run_dirs.items()}
    predictions = {name: rundir.eval_predictions(d, split) for name, d in run_dirs.items()}
    base = base_run(run_dirs)
    study = find_study(run_dirs, split, study_path)
    table = comparison_table(
        metrics,
        split,
        {name: rundir.evaluated_splits(d) for name, d in run_dirs.items()},
        base,
        study is None,
    )
    comparisons, notes = paired_comparisons(run_dirs, comparison_pairs(run_dirs, compare), split)
    verdict = verdict_lines(metrics, comparisons, study)
    sections = paired_and_health_markdown(metrics, comparisons, notes)
    data_dir = Path(data_dir) if data_dir else _data_dir_of(run_dirs)
    rows = sample_rows(data_dir, split, predictions, samples) if data_dir else []
    files = []
    curves = {}
    for name, run_dir in run_dirs.items():
        curves[name] = plot_curves(rundir.read_json(run_dir / rundir.TRAINER_STATE) or {}, name)
        if curves[name]:
            files.append(out_dir / "curves" / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".png"))
            write_bytes_atomic(files[-1], curves[name])
    outputs = {
        "comparison.md": f"# Scores on the {split} split\n\n" + verdict_markdown(verdict) + table + sections,
        "report.html": render_html(
            metrics,
            rows,
            curves,
            split,
            comparisons,
            notes,
            base,
            completions_html(run_dirs),
            verdict,
            study is None,
        ),
    }
    for file_name, text in outputs.items():
        write_text_atomic(out_dir / file_name, text)
        files.append(out_dir / file_name)
    write_json_atomic(out_dir / "summary.json", {"runs": metrics, "comparisons": comparisons})
    files.append(out_dir / "summary.json")
    return {
        "metrics": metrics,
        "verdict": verdict,
        "table": table,
        "sections": sections,
        "comparisons": comparisons,
        "files": [str(f) for f in files],
    }
