"""The attributes/CIDEr frontier (`fashioncap study --sweep KEY=v1,v2,...`): how far RL can push the catalogue
attributes a caption names (ALS, ALS-F1) before the descriptions' style (CIDEr) and the captions themselves
(repeated trigrams) give way (issue 24).

Each point of the sweep (one value per swept key; several `--sweep` make their product) is a study of its own
(`fashioncap.study.run_study`, with the point's values as recipe overrides) over at least 3 seeds, in
OUT/<trial>/<point>/; each RL trial's MLE twin (trial 1 for trial 2, trial 3 for trials 4 and 5) is studied
once over the same seeds, in OUT/<twin>/. OUT/frontier.json, frontier.md and frontier.png hold per point the
mean over seeds with its 95% t-interval of ALS, ALS-F1 and CIDEr, and the repeated-trigram share beside it.
Sweeps into the same OUT add their points to these files (a point measured again replaces its earlier self):
a frontier is drawn a few points at a time, without a product of every key's values.

`reward_mix` sweeps the reward mix: `als+sls`, `als_f1+sls+repetition`, `cider:0.3+als_f1+sls` (name:weight,
weight 1 when left out) set reward_funcs and reward_weights.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

from fashioncap import rundir
from fashioncap.errors import ConfigError
from fashioncap.io_utils import write_bytes_atomic, write_json_atomic, write_text_atomic
from fashioncap.report import DEFAULT_PAIRS, markdown_table
from fashioncap.study import run_study, seed_summary

MIN_SEEDS = 3
REWARD_MIX = "reward_mix"
# (column, where each seed's eval keeps it): the frontier's axes, then the collapse figure beside each point
FIGURES = (
    ("ALS", ("ALS",)),
    ("ALS-F1", ("reward/als_f1",)),
    ("CIDEr", ("CIDEr",)),
    ("repeat a trigram", ("health", "repeated_trigram_share")),
)
MLE_TWINS = {rl: mle for rl, mle in DEFAULT_PAIRS}


def parse_sweeps(specs: Sequence[str]) -> dict[str, list[str]]:
    """`KEY=v1,v2,...` per --sweep -> {key: [values]}; a key twice or a spec without values is an error."""
    sweeps: dict[str, list[str]] = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        key = key.strip().removeprefix("--")
        parsed = [v.strip() for v in values.split(",") if v.strip()]
        if not key or not parsed:
            raise ConfigError(f"--sweep {spec!r}: give KEY=v1,v2,... (e.g. --sweep rl_weight=0.25,0.5,1)")
        if key in sweeps:
            raise ConfigError(f"--sweep {key} is given twice: list all its values in one --sweep")
        sweeps[key] = parsed
    return sweeps


def reward_mix_overrides(mix: str) -> list[str]:
    """`cider:0.3+als_f1+sls` -> --reward_funcs cider als_f1 sls --reward_weights 0.3 1.0 1.0."""
    names, weights = [], []
    for part in mix.split("+"):
        name, _, weight = part.partition(":")
        try:
            weights.append(str(float(weight)) if weight else "1.0")
        except ValueError:
            raise ConfigError(f"--sweep reward_mix: {part!r} is not name or name:weight") from None
        names.append(name.strip())
    return ["--reward_funcs", *names, "--reward_weights", *weights]


def sweep_points(sweeps: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the swept values, in the order given: [{key: value}, ...]."""
    keys = list(sweeps)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*sweeps.values())]


def point_overrides(point: dict[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in point.items():
        args += reward_mix_overrides(value) if key == REWARD_MIX else [f"--{key}", value]
    return args


def point_label(point: dict[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in point.items())


def point_dir(point: dict[str, str]) -> str:
    """A folder name for the point: `rl_weight-0.5_loss_type-grpo` (`:` and `+` of a mix kept out)."""
    return "_".join(f"{k}-{v.replace(':', '@').replace('+', '.')}" for k, v in point.items())


def figure_summaries(run_dirs: Sequence[str], split: str) -> dict[str, dict]:
    """Per FIGURES column, `seed_summary` over the seed runs' eval metrics (a column none scored is left out)."""
    per_seed = [rundir.eval_metrics(Path(run_dir), split) for run_dir in run_dirs]
    summaries = {}
    for column, path in FIGURES:
        values = []
        for metrics in per_seed:
            for key in path:
                metrics = metrics.get(key) if isinstance(metrics, dict) else None
            values.append(metrics)
        if all(isinstance(v, int | float) for v in values):
            summaries[column] = seed_summary(values)
    return summaries


def run_frontier(
    out_dir: str | Path,
    sweeps: dict[str, list[str]],
    runs: Sequence[str],
    seeds: Sequence[int],
    split: str = "val",
    **study_kwargs,
) -> dict:
    """Study each RL trial of `runs` at every sweep point and its MLE twin once; write and return frontier.json.
    `study_kwargs` go to every `run_study` (recipes, base, overrides, family_name)."""
    if len(seeds) < MIN_SEEDS:
        raise ConfigError(
            f"--sweep needs at least {MIN_SEEDS} seeds per point for an interval, not {len(seeds)}"
        )
    out_dir = Path(out_dir)
    # another split's frontier in OUT is an error before anything trains
    earlier_points(out_dir / "frontier.json", split)
    overrides = list(study_kwargs.pop("overrides", ()))
    points = []
    for trial in runs:
        for point in sweep_points(sweeps):
            study = run_study(
                out_dir / trial / point_dir(point), [trial], seeds, split=split,
                overrides=[*overrides, *point_overrides(point)], **study_kwargs,
            )  # fmt: skip
            run_dirs = study["runs"][trial]["run_dirs"]
            points.append({"trial": trial, "point": point, "mle_twin": False, "seeds": list(seeds),
                           "figures": figure_summaries(run_dirs, split)})  # fmt: skip
    for twin in dict.fromkeys(MLE_TWINS[t] for t in runs if t in MLE_TWINS):
        study = run_study(out_dir / twin, [twin], seeds, split=split, overrides=overrides, **study_kwargs)
        points.append({"trial": twin, "point": {}, "mle_twin": True, "seeds": list(seeds),
                       "figures": figure_summaries(study["runs"][twin]["run_dirs"], split)})  # fmt: skip
    keys = {_point_key(p) for p in points}
    # read again: a sweep running beside this one may have added points since
    earlier = earlier_points(out_dir / "frontier.json", split)
    points = [p for p in earlier if _point_key(p) not in keys] + points
    frontier = {"split": split, "points": points}
    write_json_atomic(out_dir / "frontier.json", frontier)
    write_text_atomic(out_dir / "frontier.md", frontier_markdown(frontier))
    write_bytes_atomic(out_dir / "frontier.png", plot_frontier(frontier))
    return frontier


def earlier_points(path: Path, split: str) -> list[dict]:
    """The points an earlier sweep into the same OUT measured: a frontier grows over sweeps (a point measured
    again replaces its earlier self). A frontier of another split is an error, raised before anything trains."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    if earlier.get("split") != split:
        raise ConfigError(
            f"{path} holds a frontier of the {earlier.get('split')} split, not {split}: give another --out"
        )
    return earlier["points"]


def _point_key(point: dict) -> tuple:
    return point["trial"], point["mle_twin"], tuple(sorted(point["point"].items()))


def _name(point: dict) -> str:
    return (
        f"{point['trial']} (MLE twin)"
        if point["mle_twin"]
        else f"{point['trial']} {point_label(point['point'])}"
    )


def _cell(summary: dict | None) -> str:
    if summary is None:
        return "n/a"
    if summary["ci95"] is None:
        return f"{summary['mean']:.3f}"
    lo, hi = summary["ci95"]
    return f"{summary['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def frontier_markdown(frontier: dict) -> str:
    columns = [column for column, _ in FIGURES]
    rows = [
        [_name(p), str(len(p["seeds"])), *(_cell(p["figures"].get(c)) for c in columns)]
        for p in frontier["points"]
    ]
    return (
        f"# Attributes/CIDEr frontier ({frontier['split']} split)\n\n"
        "Each cell: the mean over seeds [95% t-interval of the mean]. ALS and ALS-F1: the catalogue attributes "
        "the captions name (F1 charges for naming absent ones); repeat a trigram: the share of captions that "
        "repeat one (the references: under 1%).\n\n" + markdown_table(["point", "seeds", *columns], rows)
    )


def plot_frontier(frontier: dict) -> bytes:
    """A PNG: ALS (and ALS-F1) against CIDEr, each point's mean with its 95% intervals on both axes, the
    repeated-trigram share written beside it, the MLE twins as stars."""
    figure = Figure(figsize=(9, 5), layout="constrained")
    axes = figure.subplots()
    colours = matplotlib.colormaps["tab20"]
    for k, point in enumerate(p for p in frontier["points"] if "CIDEr" in p["figures"]):
        figures = point["figures"]
        for marker, column in (("o", "ALS"), ("^", "ALS-F1")):
            if column not in figures:
                continue
            x, y = figures["CIDEr"], figures[column]
            axes.errorbar(
                [x["mean"]], [y["mean"]], xerr=_half_widths(x), yerr=_half_widths(y),
                fmt="*" if point["mle_twin"] else marker, color=colours(k % 20), capsize=3, markersize=9,
                label=_name(point) if column == "ALS" else None,
            )  # fmt: skip
            repeats = figures.get("repeat a trigram")
            if repeats is not None:
                axes.annotate(f"{repeats['mean']:.0%}", (x["mean"], y["mean"]), textcoords="offset points",
                              xytext=(5, 5), fontsize=7)  # fmt: skip
    axes.set_xlabel("CIDEr")
    axes.set_ylabel("ALS (o), ALS-F1 (^); MLE twin *")
    axes.set_title(f"{frontier['split']} split: mean and 95% interval; label: repeat a trigram")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _half_widths(summary: dict) -> list[list[float]] | None:
    if summary["ci95"] is None:
        return None
    lo, hi = summary["ci95"]
    return [[summary["mean"] - lo], [hi - summary["mean"]]]
