"""Studies over seeds (`fashioncap study`, `make study`): does RL pay, beyond the noise of one run?

Retrains the named demo trials (recipes/demo/<trial>.yaml, or a recipe's path) with the given seeds from the same
demo base, evaluates each on the test split (`--split val` to choose settings without looking at test) and writes
OUT/study.json, OUT/study.md and OUT/study.png:
- per trial and metric: the mean over seeds, the standard deviation (n - 1) and a 95% t-interval of the mean;
- per pair (each RL trial against its MLE twin, as `report` pairs them, and pairs asked for): the mean over
  seeds of the difference a - b with, as the headline, a 95% t-interval over the per-seed differences, and,
  second, a 95% bootstrap interval over the test images (`paired_seed_differences`). a's run with seed s is
  paired with b's run with seed s (the same data order and initialisation), both scored on the same images.
  Each seed's difference is that of the two runs' reported scores, computed from per-image scores or
  statistics as `metrics.STATISTICS` says (corpus BLEU-4 and METEOR from summed statistics, means of the
  others).

Resumable: a seed run that finished (all_results.json) with its recipe, data and base unchanged is reused, and
so is its evaluation when it is of the same data dir and newer than the training. On one machine with the
same thread count every run repeats exactly; another machine (other CPU kernels) gives other runs: that
spread is what the seeds measure.
"""

from __future__ import annotations

import io
import math
import os
import platform
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

from fashioncap import rundir
from fashioncap.configs import load_config
from fashioncap.data.synthetic import ensure_synthetic
from fashioncap.demo import (
    BASE,
    DEFAULT_FAMILY,
    EXPECTED_SECONDS,
    IDLE_MACHINE,
    RECIPES,
    expected_training_seconds,
    identical_finished_run,
    train_unless_current,
)
from fashioncap.errors import ConfigError
from fashioncap.evaluation import evaluate_run
from fashioncap.io_utils import write_bytes_atomic, write_json_atomic, write_text_atomic
from fashioncap.metrics import STATISTICS
from fashioncap.metrics.bootstrap import resample_counts
from fashioncap.progress import Progress
from fashioncap.report import COMPARISON_HEADER, comparison_cells, comparison_pairs, markdown_table
from fashioncap.scoretable import HEADLINE_METRICS

DEFAULT_RUNS = ("trial1", "trial2", "trial3", "trial4", "trial5")
DEFAULT_SEEDS = tuple(range(5))
PLOTTED = ("CIDEr", "ALS", "SLS")


def find_trial_recipes(runs: Sequence[str], recipes: Path) -> dict[str, Path]:
    """trial name -> recipe: a name is recipes/<name>.yaml, a path to a YAML file is itself (named by its stem,
    for a trial kept outside the demo's folder, as trial 6 is); one error naming every trial not found."""
    found = {}
    for trial in runs:
        path = Path(trial) if trial.endswith((".yaml", ".yml")) else Path(recipes) / f"{trial}.yaml"
        # one name, two recipes: their runs would share OUT/<name>/ and one would silently replace the other
        if path.stem in found and found[path.stem] != path:
            raise ConfigError(f"--runs names two trials {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    missing = [f"{name} ({path})" if str(path) in runs else name for name, path in found.items()
               if not path.is_file()]  # fmt: skip
    if missing:
        available = sorted(p.stem for p in Path(recipes).glob("*.yaml") if p.stem != BASE)
        raise ConfigError(f"no recipe for {', '.join(missing)} in {recipes} (there: {', '.join(available)})")
    return found


def seed_run_dir(out_dir: Path, trial: str, seed: int) -> Path:
    return Path(out_dir) / trial / f"seed{seed}"


def _eval_is_current(run_dir: Path, split: str, data_dir: str | Path) -> bool:
    """The run's eval of `split` is of `data_dir` (other data sets number images 1..N too), has per-image
    scores (METEOR's as the statistics its corpus score sums, unless METEOR could not run: an older eval kept
    per-caption scores) and is newer than its training."""
    metrics = rundir.default_eval_dir(str(run_dir), split) / rundir.METRICS
    per_image = rundir.eval_per_image(run_dir, split)
    if per_image is None or not metrics.is_file():
        return False
    scores = rundir.eval_metrics(run_dir, split)
    return (
        Path(scores.get("data_dir") or "").resolve() == Path(data_dir).resolve()
        and metrics.stat().st_mtime_ns > (run_dir / rundir.RESULTS).stat().st_mtime_ns
        and ("METEOR" in per_image or scores.get("METEOR") is None)
    )


def run_study(
    out_dir: str | Path,
    runs: Sequence[str] = DEFAULT_RUNS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    recipes: Path = RECIPES,
    base: str | Path | None = None,
    overrides: Sequence[str] = (),
    compare: Sequence[tuple[str, str]] = (),
    split: str = "test",
    family_name: str = DEFAULT_FAMILY,
) -> dict:
    """Train and evaluate each trial of `runs` with each of `seeds`, write the study; returns study.json.

    `base`: the model the trials start from (default: the demo's base, trained by its recipe when missing or
    out of date). `overrides`: `--key value` recipe overrides for every trial run (not the base). `family_name`
    only picks the expected times announced.
    """
    out_dir, recipes = Path(out_dir), Path(recipes)
    if not seeds:
        raise ConfigError("--seeds names no seed")
    trial_recipes = find_trial_recipes(runs, recipes)
    runs = list(trial_recipes)
    pairs = comparison_pairs(runs, compare)
    if base is None:
        base_recipe = recipes / f"{BASE}.yaml"
        base_config = load_config(base_recipe)
        ensure_synthetic(base_config.data.data_dir)
        train_unless_current(BASE, base_config, base_recipe, base_config.data.data_dir)
        base_args = []
    else:
        base_args = ["--model_name_or_path", str(base)]
    results: dict[str, list[dict]] = {}
    progress = Progress(total=len(runs) * len(seeds), unit="run", where=IDLE_MACHINE)
    for trial in runs:
        for seed in seeds:
            run_dir = seed_run_dir(out_dir, trial, seed)
            recipe = trial_recipes[trial]
            trial_args = [*overrides, *base_args, "--seed", str(seed)]
            config = load_config(recipe, [*trial_args, "--output_dir", str(run_dir)])
            data_dir = config.data.data_dir
            progress.next(
                f"{trial} seed {seed}",
                expected_training_seconds(trial, config, family_name) + EXPECTED_SECONDS[family_name]["eval"],
            )
            same_run_elsewhere = load_config(recipe, trial_args).training.output_dir  # the demo's, for seed 0
            run_dir = identical_finished_run(
                config, [run_dir, same_run_elsewhere], data_dir
            ) or train_unless_current(f"{trial} seed {seed}", config, recipe, data_dir)
            if not _eval_is_current(run_dir, split, data_dir):
                print(f"\n== evaluating {trial} seed {seed} on the {split} split ==", flush=True)
                evaluate_run(
                    str(run_dir), data_dir, split, batch_size=config.training.per_device_eval_batch_size
                )
            results.setdefault(trial, []).append(
                {
                    "seed": seed,
                    "run_dir": str(run_dir),
                    "metrics": rundir.eval_metrics(run_dir, split),
                    "per_image": rundir.eval_per_image(run_dir, split),
                }
            )
    study = summarize(results, pairs, split)
    write_study(study, out_dir)
    return study


# --- statistics ---------------------------------------------------------------------------------------------


@lru_cache
def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile (p in (0.5, 1)) of Student's t with df degrees of freedom: bisection on its CDF,
    integrated by Simpson's rule (no scipy here). t(0.975, 4) = 2.7764."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 2001)
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid**2 / df))
        weights = np.ones_like(grid)
        weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
        return 0.5 + (grid[1] - grid[0]) / 3 * float(weights @ density)

    lo, hi = 0.0, 1000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def seed_summary(values: Sequence[float]) -> dict:
    """{"mean", "std" (n - 1), "ci95" (t-interval of the mean), "values"}; std and ci95 None for one seed."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "values": list(values)}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = student_t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "values": list(values)}


def paired_seed_differences(
    a_seeds: Sequence[Mapping],
    b_seeds: Sequence[Mapping],
    statistic=STATISTICS["CIDEr"],
    n: int = 1000,
    seed: int = 0,
) -> dict:
    """Run a - run b over paired seeds: {"per_seed", "delta", "std", "ci95", "ci95_images"}.

    `a_seeds[k]`, `b_seeds[k]`: per-image scores (image id -> score or stats) of seed k, on the same images.
    - per_seed: each seed's statistic(a) - statistic(b); delta: their mean; std: their sample std (n - 1);
    - ci95 (the headline): the 95% t-interval (n - 1 degrees of freedom) of the mean of the per-seed
      differences, None for one seed. Seeds are few: a percentile bootstrap over 5 seeds shrinks their variance
      by (n - 1)/n and uses ~1.96 for t(4) = 2.78, and excluded 0 in ~17% of simulated null studies;
    - ci95_images: a 95% bootstrap over the test images (one resample shared by every seed and both runs) of
      the mean difference: how far another sample of test images would move it with these seeds, not seed noise.
    """
    if len(a_seeds) != len(b_seeds) or not a_seeds:
        raise ValueError(f"{len(a_seeds)} and {len(b_seeds)} seeds: pair each seed of a with one of b")
    ids = list(a_seeds[0])
    for k, (a, b) in enumerate(zip(a_seeds, b_seeds, strict=True)):
        if set(a) != set(ids) or set(b) != set(ids):
            raise ValueError(f"seed {k}: the runs scored other images than seed 0 of a")
    images = len(ids)
    image_counts = resample_counts(images, n, seed)
    per_seed, resampled = [], []
    for a, b in zip(a_seeds, b_seeds, strict=True):
        a_stats = np.asarray([a[i] for i in ids], dtype=float)
        b_stats = np.asarray([b[i] for i in ids], dtype=float)
        per_seed.append(float(statistic(a_stats.sum(0), images) - statistic(b_stats.sum(0), images)))
        resampled.append(
            statistic(image_counts @ a_stats, images) - statistic(image_counts @ b_stats, images)
        )
    over_seeds = seed_summary(per_seed)
    lo, hi = np.quantile(np.mean(resampled, axis=0), [0.025, 0.975])
    return {
        "per_seed": per_seed,
        "delta": over_seeds["mean"],
        "std": over_seeds["std"],
        "ci95": over_seeds["ci95"],
        "ci95_images": [float(lo), float(hi)],
    }


def paired_by_seed(results: Mapping[str, Sequence[dict]], a: str, b: str) -> tuple[list[dict], list[dict]]:
    """The seed runs of trials a and b matched by seed (the same data order and initialisation), in a's order;
    trials with different seeds cannot be paired: an error naming both and their seeds."""
    b_by_seed = {r["seed"]: r for r in results[b]}
    a_seeds = [r["seed"] for r in results[a]]
    if sorted(a_seeds) != sorted(b_by_seed) or len(b_by_seed) != len(results[b]):
        raise ConfigError(
            f"cannot pair {a} (seeds {', '.join(map(str, a_seeds))}) with {b} (seeds "
            f"{', '.join(str(r['seed']) for r in results[b])}): compare trials run with the same seeds"
        )
    return list(results[a]), [b_by_seed[seed] for seed in a_seeds]


def summarize(
    results: Mapping[str, Sequence[dict]], pairs: Sequence[tuple[str, str]], split: str = "test"
) -> dict:
    """study.json from each trial's seed runs ({"seed", "run_dir", "metrics", "per_image"}); each pair's runs
    are matched by seed (`paired_by_seed`)."""
    runs = {}
    for trial, seed_runs in results.items():
        metrics = {
            metric: seed_summary([r["metrics"][metric] for r in seed_runs])
            for metric in HEADLINE_METRICS
            if all(isinstance(r["metrics"].get(metric), int | float) for r in seed_runs)
        }
        runs[trial] = {
            "n_seeds": len(seed_runs),
            "seeds": [r["seed"] for r in seed_runs],
            "run_dirs": [r["run_dir"] for r in seed_runs],
            "metrics": metrics,
        }
    comparisons = []
    for a, b in pairs:
        a_runs, b_runs = paired_by_seed(results, a, b)
        for metric in HEADLINE_METRICS:
            if all(metric in r["per_image"] for r in [*a_runs, *b_runs]):
                paired = paired_seed_differences(
                    [r["per_image"][metric] for r in a_runs],
                    [r["per_image"][metric] for r in b_runs],
                    STATISTICS[metric],
                )
                comparisons.append({"a": a, "b": b, "metric": metric, **paired})
    first = next(iter(results.values()))[0]["metrics"]
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    return {
        "split": split,
        "num_images": first["num_images"],
        "machine": machine,
        "runs": runs,
        "comparisons": comparisons,
    }


# --- output -------------------------------------------------------------------------------------------------


def _cell(summary: dict) -> str:
    if summary["std"] is None:
        return f"{summary['mean']:.3f}"
    lo, hi = summary["ci95"]
    return f"{summary['mean']:.3f} ± {summary['std']:.3f} [{lo:.3f}, {hi:.3f}]"


def seed_label(seeds: Sequence[int]) -> str:
    """'0-4' for consecutive seeds, else '0, 3, 7'."""
    if list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def study_markdown(study: dict) -> str:
    runs = study["runs"]
    metrics = [m for m in HEADLINE_METRICS if any(m in r["metrics"] for r in runs.values())]
    seeds = sorted({n for r in runs.values() for n in r["seeds"]})
    rows = [
        [
            trial,
            str(run["n_seeds"]),
            *(_cell(run["metrics"][m]) if m in run["metrics"] else "n/a" for m in metrics),
        ]
        for trial, run in runs.items()
    ]
    machine = study["machine"]
    parts = [
        f"# Study over seeds {seed_label(seeds)}: {study['split']} split, {study['num_images']} images\n\n"
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, "
        f"{machine['torch_threads']} torch threads.\n\n"
        "Each cell: mean over seeds ± standard deviation [95% t-interval of the mean].\n\n",
        markdown_table(["run", "seeds", *metrics], rows),
    ]
    if study["comparisons"]:
        rows = [_comparison_row(c) for c in study["comparisons"]]
        parts.append(
            "\n## Paired differences\n\n"
            "delta: the mean over seeds of a - b, each seed's difference computed on the same test images. "
            '95% interval (the headline, what "excludes 0" reads): a t-interval over the per-seed '
            "differences (n - 1 degrees of freedom): how far another set of seeds would move the delta. "
            "Images 95%: a bootstrap over the test images of the same delta, these seeds fixed: how far another "
            "sample of test images would move it, not the seeds' noise.\n\n"
            + markdown_table([*COMPARISON_HEADER, "images 95%", "per seed"], rows)
        )
    return "".join(parts)


def _comparison_row(comparison: dict) -> list[str]:
    lo, hi = comparison["ci95_images"]
    extra = [f"[{lo:+.4f}, {hi:+.4f}]", ", ".join(f"{d:+.3f}" for d in comparison["per_seed"])]
    if comparison["ci95"] is not None:
        return [*comparison_cells(comparison), *extra]
    a, b = comparison["a"], comparison["b"]
    return [
        f"{a} - {b}",
        comparison["metric"],
        f"{comparison['delta']:+.4f}",
        "n/a (one seed)",
        "n/a",
        *extra,
    ]


def plot_study(study: dict) -> bytes:
    """A PNG: per metric, each trial's seed scores (dots) and its mean with the 95% interval."""
    runs = study["runs"]
    metrics = [m for m in PLOTTED if any(m in r["metrics"] for r in runs.values())]
    figure = Figure(figsize=(4 * max(1, len(metrics)), 3.5), layout="constrained")
    figure.suptitle(f"{study['split']} split over seeds: mean and 95% interval")
    for axes, metric in zip(
        figure.subplots(1, max(1, len(metrics)), squeeze=False).flat, metrics, strict=False
    ):
        names = [trial for trial, run in runs.items() if metric in run["metrics"]]
        for x, trial in enumerate(names):
            summary = runs[trial]["metrics"][metric]
            axes.plot([x] * len(summary["values"]), summary["values"], "o", color="0.6", markersize=4)
            if summary["ci95"] is not None:
                lo, hi = summary["ci95"]
                axes.errorbar([x], [summary["mean"]], yerr=[[summary["mean"] - lo], [hi - summary["mean"]]],
                              fmt="s", color="C0", capsize=4)  # fmt: skip
            else:
                axes.plot([x], [summary["mean"]], "s", color="C0")
        axes.set_xticks(range(len(names)), names)
        axes.set_title(metric)
        axes.grid(alpha=0.3, axis="y")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_study(study: dict, out_dir: Path) -> None:
    write_json_atomic(out_dir / "study.json", study)
    write_text_atomic(out_dir / "study.md", study_markdown(study))
    write_bytes_atomic(out_dir / "study.png", plot_study(study))
