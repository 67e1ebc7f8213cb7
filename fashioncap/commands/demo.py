"""`fashioncap demo` (`make demo`): train, evaluate and compare every recipe in recipes/demo/ on the synthetic set."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "the whole recipe on the built-in synthetic set (minutes on a CPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipes", type=Path, help="folder of recipes: base.yaml and the trials (default: recipes/demo)"
    )
    parser.add_argument("--report-dir", default="outputs/demo/report", help="where the report goes")
    parser.add_argument("--force", action="store_true", help="retrain runs that already finished")


def run(args: argparse.Namespace) -> int:
    from fashioncap.demo import RECIPES, run_demo

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    run_demo(args.recipes or RECIPES, args.report_dir, args.force)
    return 0
