"""`fashioncap study --seeds N --runs trial1 ... --out DIR` (`make study`): demo trials over seeds."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fashioncap.commands.demo import add_family_argument
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
        help="demo recipes to retrain (names in --recipes or recipe files; default: trial1 ... trial5, with "
        "--sweep trial2)",
    )
    add_family_argument(parser)
    parser.add_argument(
        "--out", help="where runs and study.{json,md,png} go (default: outputs/study, outputs/study-<family>)"
    )
    parser.add_argument("--recipes", type=Path, help="folder of demo recipes (default: the family's)")
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


def check_split(split: str, runs: list[str], recipes: Path, overrides: list[str]) -> None:
    """`--split` names a split of every trial's data, checked before the study trains anything (a typo would
    otherwise fail at the first eval, after the base and a trial were trained). A data dir not built yet is
    the synthetic set the study builds."""
    from fashioncap.configs import load_config
    from fashioncap.data.coco import available_splits
    from fashioncap.data.synthetic import SPLITS
    from fashioncap.errors import ConfigError, did_you_mean
    from fashioncap.study import find_trial_recipes

    for trial, recipe in find_trial_recipes(runs, recipes).items():
        data = load_config(recipe, overrides).data
        if data.data_from_hub:
            continue
        splits = available_splits(data.data_dir) if Path(data.data_dir).is_dir() else list(SPLITS)
        if split not in splits:
            raise ConfigError(
                f"--split {split}: the data of {trial} ({data.data_dir}) has no such split (it has "
                f"{', '.join(splits)}){did_you_mean(split, splits)}"
            )


def run(args: argparse.Namespace) -> int:
    from fashioncap.demo import DEFAULT_FAMILY, family_outputs, family_recipes
    from fashioncap.study import DEFAULT_RUNS, DEFAULT_SEEDS, run_study, study_markdown

    family_name = args.family or DEFAULT_FAMILY
    recipes = args.recipes or family_recipes(family_name)  # one line for a family fashioncap lacks
    out = args.out or family_outputs("study", family_name)
    # a sweep draws one RL trial's frontier on val over 3 seeds; a study compares the trials on test over 5
    runs = args.runs or (["trial2"] if args.sweep else DEFAULT_RUNS)
    seeds = args.seeds or (seed_list("3") if args.sweep else DEFAULT_SEEDS)
    split = args.split or ("val" if args.sweep else "test")
    check_split(split, runs, recipes, args.overrides)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    if args.sweep:
        from fashioncap.frontier import frontier_markdown, parse_sweeps, run_frontier

        frontier = run_frontier(
            out, parse_sweeps(args.sweep), runs, seeds, split,
            recipes=recipes, base=args.base, overrides=args.overrides, family_name=family_name,
        )  # fmt: skip
        print(frontier_markdown(frontier))
        print(f"wrote {out}/frontier.json, frontier.md, frontier.png")
        return 0
    study = run_study(
        out, runs, seeds, recipes, args.base, args.overrides, args.compare, split, family_name=family_name
    )
    print(study_markdown(study))
    print(f"wrote {out}/study.json, study.md, study.png")
    return 0
