"""`fashioncap report RUN ... --out DIR`: the trial comparison table, an HTML page with captions, curves."""

from __future__ import annotations

import argparse
import logging
import sys

HELP = "compare runs: table, HTML with captions, training curves"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="run dirs (each with eval/<split>/ from `fashioncap eval`)"
    )
    parser.add_argument(
        "--out", required=True, help="output dir for comparison.md, report.html, curves/, summary.json"
    )
    parser.add_argument("--data", help="data dir for the sample images (default: the runs' recipe data dir)")
    parser.add_argument(
        "--split",
        default="test",
        help="the split whose scores to compare (default: test); runs not evaluated on it are listed as such",
    )
    parser.add_argument("--samples", type=int, default=12, help="sample images on the HTML page")
    parser.add_argument(
        "--study",
        help="study.json (or its folder) of these runs, whose paired verdicts over seeds replace the one-seed "
        "ties (default: OUTPUTS/study/ beside the runs' folder, when it compares them)",
    )
    add_compare_argument(parser, "run A with run B (run names as in the table; repeatable)")


def add_compare_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """`--compare A B`, shared by `report` and `study`: pairs compared beside each RL trial and its MLE twin."""
    parser.add_argument(
        "--compare",
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help=f"also compare {what}. Each RL trial is compared with its MLE twin anyway (trial2-trial1, "
        "trial4-trial3, trial5-trial3)",
    )


def run(args: argparse.Namespace) -> int:
    from fashioncap.report import run_names, write_report

    logging.basicConfig(format="%(levelname)s %(message)s", level=logging.INFO)
    from fashioncap.verdict import verdict_markdown

    result = write_report(
        run_names(args.runs), args.out, args.data, args.split, args.samples, args.compare, args.study
    )
    print(verdict_markdown(result["verdict"]) + result["table"] + result["sections"])
    print("wrote " + ", ".join(result["files"]), file=sys.stderr)
    return 0
