"""`make demo`: the whole recipe on the built-in synthetic fashion set, sized for a 2-core CPU.

Builds the data and the tiny base model if missing, trains trials 1-4 as LoRA fine-tunes of that base with the
same entry point, trainer and configs as the real recipes (recipes/demo/), evaluates the base zero-shot and each
trial on the test split, and writes the seed-style report. A finished run is reused while its recipe, the data
and the run it starts from are unchanged; evaluation always reruns.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "demo"
RUNS = ("base", "trial1", "trial2", "trial3", "trial4")
TABLE_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "ALS", "SLS")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def table(summary: dict[str, dict]) -> str:
    header = "| run | " + " | ".join(TABLE_METRICS) + " |"
    rows = [
        f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in TABLE_METRICS) + " |"
        for name, m in summary.items()
    ]
    return "\n".join([header, "|" + "---|" * (len(TABLE_METRICS) + 1), *rows])


def _reason_to_train(run_dir: Path, config, inputs: list[Path]) -> str | None:
    """Why `run_dir` must be (re)trained for `config`, or None when its finished result is still current.

    `inputs` are files whose change invalidates the run (the data's build report, the base run's results)."""
    from fashioncap.train import RUN_CONFIG

    results = run_dir / "all_results.json"
    if not results.is_file():
        return "not trained yet"
    saved = json.loads((run_dir / RUN_CONFIG).read_text()) if (run_dir / RUN_CONFIG).is_file() else {}
    saved.pop("source", None)  # where the recipe file was, not what it says
    wanted = json.loads(json.dumps(config.to_dict(), default=str))
    wanted.pop("source", None)
    if saved != wanted:
        return "its recipe changed"
    newer = [str(p) for p in inputs if p.is_file() and p.stat().st_mtime_ns > results.stat().st_mtime_ns]
    return f"{', '.join(newer)} changed since" if newer else None


def run_demo(recipes: Path = RECIPES, report_dir: str = "outputs/demo/report", force: bool = False) -> dict:
    from fashioncap.configs import load_config
    from fashioncap.data import ensure_synthetic
    from fashioncap.evaluation import evaluate_run
    from fashioncap.report import write_report
    from fashioncap.train import train

    start = time.perf_counter()
    configs = {name: load_config(recipes / f"{name}.yaml") for name in RUNS}
    data_dir = configs["trial1"].data.data_dir
    ensure_synthetic(data_dir)
    run_dirs = {}
    for name, config in configs.items():
        run_dir = Path(config.training.output_dir)
        base_results = Path(config.model.model_name_or_path) / "all_results.json"
        inputs = [Path(data_dir) / "build_report.json", base_results]
        reason = "--force" if force else _reason_to_train(run_dir, config, inputs)
        if reason:
            print(f"\n== training {name} ({recipes / (name + '.yaml')}): {reason} ==", flush=True)
            train(config)
        else:
            print(f"\n== {name}: reusing the finished run in {run_dir} ==", flush=True)
        run_dirs[name] = run_dir
    summary = {}
    for name, run_dir in run_dirs.items():
        print(f"\n== evaluating {name} on the test split ==", flush=True)
        summary[name] = evaluate_run(str(run_dir), data_dir, "test", out_dir=run_dir / "eval",
                                     batch_size=configs[name].training.per_device_eval_batch_size)  # fmt: skip
    write_report(run_dirs, report_dir, data_dir=data_dir, split="test")
    minutes = (time.perf_counter() - start) / 60
    print(f"\nTest scores on the synthetic set ({summary['base']['num_images']} images):\n")
    print(table(summary))
    print(f"\nDemo finished in {minutes:.1f} min. Report: {report_dir}/report.html (table: comparison.md, "
          f"scores: summary.json, training curves: curves/)")  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fashioncap.demo", description=__doc__)
    parser.add_argument(
        "--recipes", type=Path, default=RECIPES, help="folder with base.yaml and trial1-4.yaml"
    )
    parser.add_argument("--report-dir", default="outputs/demo/report")
    parser.add_argument("--force", action="store_true", help="retrain runs that already finished")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    run_demo(args.recipes, args.report_dir, args.force)


if __name__ == "__main__":
    main()
