"""Compare runs the way the seed did, from the files `train` and `eval` leave in each run (`fashioncap report`).

OUT/comparison.md      the seed-style table (BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE, ALS, SLS) per run
OUT/report.html        one self-contained page: the table, sample test images (embedded) with the reference
                       and each run's caption side by side (the seed's "human evaluation" view), the curves
OUT/curves/<run>.png   training curves (losses, rewards) from RUN/trainer_state.json
OUT/summary.json       {run name: RUN/eval/metrics.json}
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

from fashioncap import rundir
from fashioncap.data import references_file
from fashioncap.data.images import ImageProblem, open_rgb
from fashioncap.io_utils import safe_join, write_bytes_atomic, write_json_atomic, write_text_atomic
from fashioncap.scoretable import HEADLINE_METRICS, format_score, score_table

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


def comparison_table(metrics: dict[str, dict | None]) -> str:
    """Markdown, one row per run; a metric that could not run (or a run not evaluated) shows "n/a"."""
    missing = [name for name, scores in metrics.items() if scores is None]
    note = (
        f"\nNot evaluated (no {rundir.EVAL_DIR}/{rundir.METRICS}; run `fashioncap eval`): {', '.join(missing)}\n"
        if missing
        else ""
    )
    return score_table(metrics) + note


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
"""


def render_html(metrics: dict, rows: list[dict], curves: dict[str, bytes | None], split: str) -> str:
    esc = html.escape
    names = list(metrics)
    head = "".join(f"<th>{esc(m)}</th>" for m in HEADLINE_METRICS)
    score_rows = "".join(
        f"<tr><td>{esc(name)}</td>"
        + "".join(f'<td class="num">{format_score((scores or {}).get(m))}</td>' for m in HEADLINE_METRICS)
        + "</tr>"
        for name, scores in metrics.items()
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>fashioncap report</title><style>{STYLE}</style>",
        "</head><body><h1>fashioncap: run comparison</h1>",
        f"<h2>Test scores ({esc(split)})</h2><table><tr><th>run</th>{head}</tr>{score_rows}</table>",
    ]
    if rows:
        run_heads = "".join(f"<th>{esc(n)}</th>" for n in names)
        parts.append(f"<h2>Samples</h2><table><tr><th>image</th><th>references</th>{run_heads}</tr>")
        for row in rows:
            image = (
                f'<img class="sample" src="{row["image"]}" alt="image {row["image_id"]}">'
                if row["image"]
                else "(unreadable)"
            )
            refs = "<br>".join(esc(r) for r in row["references"])
            caps = "".join(f'<td class="cap">{esc(row["captions"][n] or "—")}</td>' for n in names)
            parts.append(f'<tr><td>{image}<br>#{row["image_id"]}</td><td class="ref">{refs}</td>{caps}</tr>')
        parts.append("</table>")
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
) -> dict:
    """Write the table, HTML page, curve PNGs and summary.json for `runs` (name -> run dir) into `out_dir`.

    Returns {"metrics": {name: metrics or None}, "files": [paths written]}. The sample images come from
    `data_dir` (default: the runs' recipe data dir); without one the page has no samples.
    """
    out_dir = Path(out_dir)
    run_dirs = {name: Path(d) for name, d in runs.items()}
    metrics = {name: rundir.eval_metrics(d) for name, d in run_dirs.items()}
    predictions = {name: rundir.eval_predictions(d) for name, d in run_dirs.items()}
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
        "comparison.md": f"# Test scores ({split})\n\n" + comparison_table(metrics),
        "report.html": render_html(metrics, rows, curves, split),
    }
    for file_name, text in outputs.items():
        write_text_atomic(out_dir / file_name, text)
        files.append(out_dir / file_name)
    write_json_atomic(out_dir / "summary.json", metrics)
    files.append(out_dir / "summary.json")
    return {"metrics": metrics, "files": [str(f) for f in files]}
