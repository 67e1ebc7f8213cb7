"""`fashioncap demo` (`make demo`): train, evaluate and compare every recipe in recipes/demo/ on the synthetic set."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "the whole recipe on the built-in synthetic set (minutes on a CPU)"


def add_family_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--family",
        help="the model family whose tiny stand-in the demo trains, such as florence2: picks recipes/demo/<family>/ "
        "and outputs/<command>-<family>/ (default: BLIP, recipes/demo/ and outputs/<command>/)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_family_argument(parser)
    parser.add_argument(
        "--recipes", type=Path, help="folder of recipes: base.yaml and the trials (default: the family's)"
    )
    parser.add_argument(
        "--report-dir",
        help="where the report goes (default: outputs/demo/report, outputs/demo-<family>/report)",
    )
    parser.add_argument("--force", action="store_true", help="retrain runs that already finished")


def run(args: argparse.Namespace) -> int:
    from fashioncap.demo import DEFAULT_FAMILY, family_outputs, family_recipes, run_demo

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    family_name = args.family or DEFAULT_FAMILY
    recipes = args.recipes or family_recipes(family_name)  # one line for a family fashioncap lacks
    report_dir = args.report_dir or f"{family_outputs('demo', family_name)}/report"
    run_demo(recipes, report_dir, args.force, family_name)
    return 0
