"""`make demo`: the whole recipe on the built-in synthetic fashion set, sized for a 2-core CPU.

Builds the data and the tiny base model if missing, trains every recipe in recipes/demo/ (the base first, then
the trials in name order) with the same entry point, trainer and configs as the real recipes, evaluates each on
the test split (the base zero-shot), and writes the seed-style report. A finished run is reused while its
recipe, the data and the run it starts from are unchanged; evaluation always reruns. Adding a trial to the demo
is adding a YAML file to recipes/demo/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fashioncap import rundir
from fashioncap.configs import RecipeConfig, load_config
from fashioncap.data.synthetic import ensure_synthetic
from fashioncap.errors import MissingPathError
from fashioncap.evaluation import evaluate_run
from fashioncap.report import write_report
from fashioncap.scoretable import score_table
from fashioncap.train import train

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "demo"
BASE = "base"


def demo_recipes(recipes: Path = RECIPES) -> dict[str, Path]:
    """name -> recipe for every YAML in the folder: the base first, then the others by name."""
    paths = sorted(Path(recipes).glob("*.yaml"), key=lambda p: (p.stem != BASE, p.stem))
    if not paths:
        raise MissingPathError(f"no recipes (*.yaml) in {recipes}")
    return {p.stem: p for p in paths}


def reason_to_train(run_dir: Path, config: RecipeConfig, inputs: list[Path]) -> str | None:
    """Why `run_dir` must be (re)trained for `config`, or None when its finished result is still current.

    `inputs` are files whose change invalidates the run (the data's build report, the base run's results)."""
    results = run_dir / rundir.RESULTS
    if not results.is_file():
        return "not trained yet"
    saved = rundir.run_config(run_dir) or {}
    saved.pop("source", None)  # where the recipe file was, not what it says
    wanted = json.loads(json.dumps(config.to_dict(), default=str))
    wanted.pop("source", None)
    if saved != wanted:
        return "its recipe changed"
    newer = [str(p) for p in inputs if p.is_file() and p.stat().st_mtime_ns > results.stat().st_mtime_ns]
    return f"{', '.join(newer)} changed since" if newer else None


def train_unless_current(
    name: str, config: RecipeConfig, recipe: Path, data_dir: str, force: bool = False
) -> Path:
    """Train `config` unless its run finished with the same recipe, data and base (`reason_to_train`).
    Returns the run dir."""
    run_dir = Path(config.training.output_dir)
    base_results = Path(config.model.model_name_or_path) / rundir.RESULTS
    inputs = [Path(data_dir) / "build_report.json", base_results]
    reason = "--force" if force else reason_to_train(run_dir, config, inputs)
    if reason:
        print(f"\n== training {name} ({recipe}): {reason} ==", flush=True)
        config.training.overwrite_output_dir = True  # decided here: this run is out of date
        train(config)
    else:
        print(f"\n== {name}: reusing the finished run in {run_dir} ==", flush=True)
    return run_dir


def run_demo(recipes: Path = RECIPES, report_dir: str = "outputs/demo/report", force: bool = False) -> dict:
    start = time.perf_counter()
    paths = demo_recipes(recipes)
    configs = {name: load_config(path) for name, path in paths.items()}
    data_dir = configs[next(iter(configs))].data.data_dir
    ensure_synthetic(data_dir)
    run_dirs = {
        name: train_unless_current(name, config, paths[name], data_dir, force)
        for name, config in configs.items()
    }
    summary = {}
    for name, run_dir in run_dirs.items():
        print(f"\n== evaluating {name} on the test split ==", flush=True)
        summary[name] = evaluate_run(str(run_dir), data_dir, "test",  # into RUN/eval/test
                                     batch_size=configs[name].training.per_device_eval_batch_size)  # fmt: skip
    write_report(run_dirs, report_dir, data_dir=data_dir, split="test")
    minutes = (time.perf_counter() - start) / 60
    print(f"\nTest scores on the synthetic set ({next(iter(summary.values()))['num_images']} images):\n")
    print(score_table(summary))
    print(f"Demo finished in {minutes:.1f} min. Report: {report_dir}/report.html (table: comparison.md, "
          f"scores: summary.json, training curves: curves/)")  # fmt: skip
    return summary
