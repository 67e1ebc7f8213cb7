"""The `fashioncap` command: one subcommand per module of fashioncap/commands/.

Command modules import only the standard library and fashioncap's standard-library-only modules (errors,
recipe_keys) at their top (the library loads inside `run`), so building the whole parser is cheap and `--help`
answers at once. Every command runs behind one error boundary (`fashioncap.errors.run_command`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fashioncap import __version__
from fashioncap.errors import DEBUG_ENV, run_command

COMMANDS = ("data", "train", "eval", "score", "caption", "report", "export", "push", "app", "demo", "study",
            "metrics")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashioncap", description="Fine-tune BLIP for fashion captioning.")
    parser.add_argument("--version", action="version", version=f"fashioncap {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an error instead of its one-line message (or set {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"fashioncap.commands.{name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run, accepts_overrides=getattr(module, "ACCEPTS_OVERRIDES", False))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not args.accepts_overrides:  # only `train` and `study` take --key value recipe overrides
        parser.parse_args(argv)  # prints the usage error and exits 2
    args.overrides = extra
    subcommand = getattr(args, f"{args.command}_command", None)  # data synthetic, metrics install-spice
    name = f"{args.command} {subcommand}" if subcommand else args.command
    return run_command(name, args.run, args, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
