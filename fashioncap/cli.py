"""The `fashioncap` command: one subcommand per module, imported only when used (torch is slow to import)."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help). Each module defines `add_arguments(parser)` and `run(args) -> int | None`.
COMMANDS = {
    "data": ("fashioncap.data.cli", "build or check a data dir (synthetic set, FACAD, your own COCO set)"),
    "train": ("fashioncap.train", "train one trial from a YAML recipe"),
    "eval": ("fashioncap.evaluation", "caption a split with a trained run and score it"),
    "score": ("fashioncap.metrics.cli", "score predictions against references (COCO formats)"),
    "caption": ("fashioncap.inference", "caption images or folders"),
    "report": ("fashioncap.report", "compare runs: table, HTML with captions, training curves"),
    "push": ("fashioncap.hub", "push an adapter, its processor and model card to the Hugging Face Hub"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fashioncap", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or the usage error
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"fashioncap {name}", description=COMMANDS[name][1])
    module.add_arguments(command_parser)
    if getattr(module, "ACCEPTS_OVERRIDES", False):  # `train`: any other --key value overrides the recipe
        args, args.overrides = command_parser.parse_known_args(argv[1:])
    else:
        args = command_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
