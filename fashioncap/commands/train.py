"""`fashioncap train --config RECIPE [--key value ...]`, and the launchers `accelerate launch recipes/trialN.py`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fashioncap.errors import run_command, take_debug_flag
from fashioncap.noise import hide_known_harmless
from fashioncap.recipe_keys import recipe_keys_help

HELP = "train one trial from a YAML recipe"
ACCEPTS_OVERRIDES = True  # any other --key value pair overrides that key of the recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="recipe YAML (recipes/trial4.yaml, recipes/demo/...)")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = recipe_keys_help()


def run(args: argparse.Namespace) -> int:
    from fashioncap.configs import load_config
    from fashioncap.train import train

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    train(load_config(args.config, args.overrides))
    return 0


def main(argv: list[str] | None = None, default_config: str | Path | None = None) -> int:
    """Entry point of the thin launchers in recipes/: `--config` is optional there (the launcher's own YAML)."""
    argv, debug = take_debug_flag(sys.argv[1:] if argv is None else argv)
    hide_known_harmless()
    config = default_config
    if "--config" in argv:
        i = argv.index("--config")
        config, argv = argv[i + 1], argv[:i] + argv[i + 2 :]
    return run_command("train", run, argparse.Namespace(config=config, overrides=argv), debug=debug)
