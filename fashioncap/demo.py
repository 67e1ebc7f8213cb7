"""`make demo`: the whole recipe on the built-in synthetic fashion set, sized for a 2-core CPU.

Builds the data and the tiny base model if missing, trains every recipe in recipes/demo/ (the base first, then
the trials in name order) with the same entry point, trainer and configs as the real recipes, evaluates each on
the test split (the base zero-shot), and writes the seed-style report, announcing each stage with its count
and expected time (`fashioncap.progress`). A finished run is reused while its recipe, the data and the run it
starts from are unchanged; evaluation always reruns. Adding a trial to the demo is adding a YAML file to
recipes/demo/. Another model family's demo (`--family florence2`) has its own folder, recipes/demo/<family>/,
and writes to outputs/demo-<family>/: its recipes build that family's tiny stand-in (`tiny_family`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fashioncap import rundir
from fashioncap.configs import RecipeConfig, load_config
from fashioncap.data.synthetic import ensure_synthetic
from fashioncap.errors import ConfigError, MissingPathError
from fashioncap.evaluation import evaluate_run
from fashioncap.models import DEFAULT_FAMILY, FAMILIES
from fashioncap.progress import Progress, format_duration
from fashioncap.report import write_report
from fashioncap.train import train
from fashioncap.verdict import verdict_markdown

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "demo"
BASE = "base"

# Expected seconds per stage and family on this project's 2-core machine, from BENCHMARKS.md. BLIP: "make demo"
# 2026-12-06 (synthetic v4) with nothing else running: the base 5.8 min for its 3,780 steps, MLE trials 36-48 s,
# RL trials 72-102 s, an evaluation 3-12 s, the synthetic set ~3 s. Florence-2: `fashioncap demo --family
# florence2` 2026-12-06 with nothing else running: the base 5.7 min for its 2,520 steps (40 epochs), MLE trials
# 42-78 s, RL trials 78-120 s, an evaluation ~6 s. Other CPU-heavy work slows torch several-fold.
EXPECTED_SECONDS = {
    "blip": {"data": 3, "base": 345, "mle": 42, "rl": 86, "eval": 5, "report": 5},
    "florence2": {"data": 3, "base": 341, "mle": 60, "rl": 105, "eval": 6, "report": 5},
}
IDLE_MACHINE = " on an idle 2-core machine"


def family_recipes(family_name: str = DEFAULT_FAMILY) -> Path:
    """The demo recipes of a family: recipes/demo/ for the default family, recipes/demo/<family>/ for others."""
    if family_name not in FAMILIES:
        raise ConfigError(
            f"--family {family_name}: fashioncap has no such model family ({', '.join(FAMILIES)})"
        )
    return RECIPES if family_name == DEFAULT_FAMILY else RECIPES / family_name


def family_outputs(command: str, family_name: str = DEFAULT_FAMILY) -> str:
    """Where a family's demo or study writes: outputs/<command> for the default family, outputs/<command>-<family>
    for others, so two families' runs never overwrite each other."""
    return f"outputs/{command}" if family_name == DEFAULT_FAMILY else f"outputs/{command}-{family_name}"


def expected_training_seconds(name: str, config: RecipeConfig, family_name: str = DEFAULT_FAMILY) -> float:
    """EXPECTED_SECONDS of training the base, an MLE trial or an RL trial of a family's demo."""
    stage = BASE if name == BASE else "rl" if config.training.rl_weight else "mle"
    return EXPECTED_SECONDS[family_name][stage]


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
    if _what_was_trained(rundir.run_config(run_dir) or {}) != _what_was_trained(config.to_dict()):
        return "its recipe changed"
    newer = [str(p) for p in inputs if p.is_file() and p.stat().st_mtime_ns > results.stat().st_mtime_ns]
    return f"{', '.join(newer)} changed since" if newer else None


def _what_was_trained(saved_config: dict) -> dict:
    """A run's saved config without where things were (the recipe file, the run's own dir) and without what the
    run read off its model (the family): what a recipe decides."""
    config = json.loads(json.dumps(saved_config, default=str))
    config.pop("source", None)
    config.pop(rundir.FAMILY, None)
    config.get("training", {}).pop("output_dir", None)
    return config


def identical_finished_run(config: RecipeConfig, candidates: list[Path], data_dir: str) -> Path | None:
    """The first of `candidates` that finished training exactly `config` (the same recipe, data, base and
    seed; only its output_dir elsewhere), or None. The study's seed-0 trials are the demo's trials: a run
    repeats to the last bit on one machine, so the finished one is reused instead of trained again."""
    inputs = _inputs_of(config, data_dir)
    found = next((Path(c) for c in candidates if reason_to_train(Path(c), config, inputs) is None), None)
    if found:
        print(f"== reusing the finished run in {found}: the same recipe, data, base and seed ==", flush=True)
    return found


def _inputs_of(config: RecipeConfig, data_dir: str) -> list[Path]:
    """The files whose change makes a run of `config` out of date: the data's build report, the base's results."""
    return [Path(data_dir) / "build_report.json", Path(config.model.model_name_or_path) / rundir.RESULTS]


def train_unless_current(
    name: str, config: RecipeConfig, recipe: Path, data_dir: str, force: bool = False
) -> Path:
    """Train `config` unless its run finished with the same recipe, data and base (`reason_to_train`).
    Returns the run dir."""
    run_dir = Path(config.training.output_dir)
    reason = "--force" if force else reason_to_train(run_dir, config, _inputs_of(config, data_dir))
    if reason:
        print(f"\n== training {name} ({recipe}): {reason} ==", flush=True)
        config.training.overwrite_output_dir = True  # decided here: this run is out of date
        train(config)
    else:
        print(f"\n== {name}: reusing the finished run in {run_dir} ==", flush=True)
    return run_dir


def run_demo(
    recipes: Path = RECIPES,
    report_dir: str = "outputs/demo/report",
    force: bool = False,
    family_name: str = DEFAULT_FAMILY,
) -> dict:
    """Train, evaluate and report every recipe in `recipes`; `family_name` only picks the expected times."""
    start = time.perf_counter()
    seconds = EXPECTED_SECONDS[family_name]
    paths = demo_recipes(recipes)
    configs = {name: load_config(path) for name, path in paths.items()}
    data_dir = configs[next(iter(configs))].data.data_dir
    progress = Progress(total=2 + 2 * len(configs), where=IDLE_MACHINE)
    expected = (
        seconds["data"]
        + sum(expected_training_seconds(name, config, family_name) for name, config in configs.items())
        + len(configs) * seconds["eval"]
        + seconds["report"]
    )
    print(f"fashioncap demo: {progress.total} stages, about {format_duration(expected)}{IDLE_MACHINE} on a "
          f"first run (finished runs are reused), most of it the {BASE} model. Other CPU-heavy work on the "
          "machine slows torch several-fold.", flush=True)  # fmt: skip
    progress.next(f"the synthetic set in {data_dir}", seconds["data"])
    ensure_synthetic(data_dir)
    run_dirs = {}
    for name, config in configs.items():
        progress.next(f"train {name}", expected_training_seconds(name, config, family_name))
        run_dirs[name] = train_unless_current(name, config, paths[name], data_dir, force)
    summary = {}
    for name, run_dir in run_dirs.items():
        progress.next(f"evaluate {name} on the test split", seconds["eval"])
        summary[name] = evaluate_run(str(run_dir), data_dir, "test",  # into RUN/eval/test
                                     batch_size=configs[name].training.per_device_eval_batch_size)  # fmt: skip
    progress.next(f"the report in {report_dir}", seconds["report"])
    report = write_report(run_dirs, report_dir, data_dir=data_dir, split="test")
    took = format_duration(time.perf_counter() - start)
    print(f"\nTest scores on the synthetic set ({next(iter(summary.values()))['num_images']} images):\n")
    print(verdict_markdown(report["verdict"]) + report["table"])
    print(f"Demo finished in {took}. Report: {report_dir}/report.html (table: comparison.md, "
          f"scores: summary.json, training curves: curves/)")  # fmt: skip
    return summary
