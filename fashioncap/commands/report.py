"""`fashioncap report RUN ... --out DIR`: the trial comparison table, an HTML page with captions, curves."""

from __future__ import annotations

import argparse
import logging
import sys

HELP = "compare runs: table, HTML with captions, training curves"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="run dirs (each with eval/ from `fashioncap eval`)"
    )
    parser.add_argument(
        "--out", required=True, help="output dir for comparison.md, report.html, curves/, summary.json"
    )
    parser.add_argument("--data", help="data dir for the sample images (default: the runs' recipe data dir)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--samples", type=int, default=12, help="sample images on the HTML page")


def run(args: argparse.Namespace) -> int:
    from fashioncap.report import comparison_table, run_names, write_report

    logging.basicConfig(format="%(levelname)s %(message)s", level=logging.INFO)
    result = write_report(run_names(args.runs), args.out, args.data, args.split, args.samples)
    print(comparison_table(result["metrics"]))
    print("wrote " + ", ".join(result["files"]), file=sys.stderr)
    return 0
