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
from fashioncap.errors import DEBUG_ENV, run_command, take_debug_flag
from fashioncap.noise import hide_known_harmless

COMMANDS = ("data", "train", "eval", "score", "caption", "report", "export", "push", "app", "demo", "study",
            "metrics")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashioncap", description="Fine-tune BLIP for fashion captioning.")
    parser.add_argument("--version", action="version", version=f"fashioncap {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an error instead of its one-line message; before or after COMMAND (or set "
        f"{DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"fashioncap.commands.{name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run, accepts_overrides=getattr(module, "ACCEPTS_OVERRIDES", False))
    return parser


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subparser `args` were parsed by (`fashioncap data synthetic`'s for `data synthetic`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None):
            return chosen_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv, debug = take_debug_flag(sys.argv[1:] if argv is None else argv)
    hide_known_harmless()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not args.accepts_overrides:  # only `train` and `study` take --key value recipe overrides
        # the subcommand's own parser: its name and usage line, not the top-level one's; exits 2
        chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    subcommand = getattr(args, f"{args.command}_command", None)  # data synthetic, metrics install-spice
    name = f"{args.command} {subcommand}" if subcommand else args.command
    return run_command(name, args.run, args, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
