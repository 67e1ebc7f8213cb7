"""`fashioncap study --seeds N --runs trial1 ... --out DIR` (`make study`): demo trials over seeds."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fashioncap.commands.report import add_compare_argument

HELP = "retrain demo trials over seeds and compare them with intervals (does RL pay?)"
ACCEPTS_OVERRIDES = True  # any other --key value pair overrides that key of every trial's recipe


def seed_list(text: str) -> list[int]:
    """--seeds: N (seeds 0..N-1), A-B (A..B, to replicate a study on fresh seeds) or a list a,b,c."""
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",")]
        elif "-" in text.lstrip("-"):
            first, last = (int(part) for part in text.split("-", 1))
            seeds = list(range(first, last + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N, A-B or a,b,c") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one seed, none negative, none twice")
    return seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seeds",
        type=seed_list,
        help="N (seeds 0..N-1; default 5, with --sweep 3), a range A-B such as 5-9, or a list such as 0,3,7",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        metavar="TRIAL",
        help="demo recipes to retrain (names in --recipes; default: trial1 ... trial5, with --sweep trial2)",
    )
    parser.add_argument("--out", default="outputs/study", help="where runs and study.{json,md,png} go")
    parser.add_argument("--recipes", type=Path, help="folder of demo recipes (default: recipes/demo)")
    parser.add_argument(
        "--base",
        help="model dir the trials start from (default: the demo's base, trained by its recipe when missing)",
    )
    parser.add_argument(
        "--split",
        help="split to evaluate on (default: test, with --sweep val; choose settings on val, never on test)",
    )
    parser.add_argument(
        "--sweep",
        action="append",
        metavar="KEY=V1,V2",
        help="draw the attributes/CIDEr frontier: study each RL trial at every value of a recipe key (rl_weight, "
        "rl_start, loss_type, reward_mix such as cider:0.3+als_f1+sls, ...) and its MLE twin; repeatable "
        "(every combination); writes OUT/frontier.{json,md,png}",
    )
    add_compare_argument(parser, "trial A with trial B (repeatable)")


def run(args: argparse.Namespace) -> int:
    from fashioncap.demo import RECIPES
    from fashioncap.study import DEFAULT_RUNS, DEFAULT_SEEDS, run_study, study_markdown

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    if args.sweep:
        return _sweep(args, args.recipes or RECIPES)
    study = run_study(
        args.out,
        args.runs or DEFAULT_RUNS,
        args.seeds or DEFAULT_SEEDS,
        args.recipes or RECIPES,
        args.base,
        args.overrides,
        args.compare,
        args.split or "test",
    )
    print(study_markdown(study))
    print(f"wrote {args.out}/study.json, study.md, study.png")
    return 0


def _sweep(args: argparse.Namespace, recipes: Path) -> int:
    from fashioncap.frontier import frontier_markdown, parse_sweeps, run_frontier

    frontier = run_frontier(
        args.out, parse_sweeps(args.sweep), args.runs or ["trial2"], args.seeds or seed_list("3"),
        args.split or "val", recipes=recipes, base=args.base, overrides=args.overrides,
    )  # fmt: skip
    print(frontier_markdown(frontier))
    print(f"wrote {args.out}/frontier.json, frontier.md, frontier.png")
    return 0
