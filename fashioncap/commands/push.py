"""`fashioncap push --model-dir RUN --repo-id USER/NAME`: the adapter, its processor and model card to the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "push an adapter, its processor and model card to the Hugging Face Hub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="a trained run (output_dir of `fashioncap train`)")
    parser.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the files and the card; upload nothing (needs no token)"
    )
    parser.add_argument(
        "--include",
        nargs="*",
        default=[],
        help="more glob patterns in the run dir to upload (e.g. 'eval/test/*')",
    )


def run(args: argparse.Namespace) -> int:
    from fashioncap.hub import CARD, prepare_upload, push

    run_dir = Path(args.model_dir)
    if args.dry_run:
        files, card = prepare_upload(run_dir, args.repo_id, args.include)
    else:
        files = push(run_dir, args.repo_id, private=args.private, extra=args.include)
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(files)} files to {args.repo_id} ({'private' if args.private else 'public'}):")
    for f in files:
        print(f"  {f}  " + ("(model card)" if f == CARD else f"({(run_dir / f).stat().st_size:,} bytes)"))
    if args.dry_run:
        print(f"\n--- {CARD} ---\n{card}")
    return 0
