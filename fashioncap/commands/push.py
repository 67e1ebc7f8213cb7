"""`fashioncap push --model-dir RUN --repo-id USER/NAME [--merged]`: the adapter (or, with --merged, the model with
the LoRA folded in), its processor and model card to the Hub."""

from __future__ import annotations

import argparse
import tempfile
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
        "--merged",
        action="store_true",
        help="push the model with the LoRA merged in (loads without PEFT, e.g. in `pipeline`) instead of the adapter",
    )
    parser.add_argument(
        "--include",
        nargs="*",
        default=[],
        help="more glob patterns in the run dir to upload (e.g. 'eval/test/*')",
    )


def run(args: argparse.Namespace) -> int:
    from fashioncap.hub import require_token

    run_dir = Path(args.model_dir)
    if not args.merged:
        return _push(args, run_dir, None)
    if not args.dry_run:
        require_token()  # before the merge, not after
    from fashioncap.export import export_run

    with tempfile.TemporaryDirectory(prefix="fashioncap-merged-") as tmp:
        return _push(args, run_dir, export_run(run_dir, Path(tmp) / "merged", merge=True))


def _push(args: argparse.Namespace, run_dir: Path, merged_dir: Path | None) -> int:
    from fashioncap.hub import CARD, prepare_upload, push

    folder = merged_dir or run_dir
    if args.dry_run:
        files, card = prepare_upload(run_dir, args.repo_id, args.include, merged_dir)
    else:
        files = push(run_dir, args.repo_id, private=args.private, extra=args.include, merged_dir=merged_dir)
    verb = "would upload" if args.dry_run else "uploaded"
    what = "the merged model" if merged_dir else "the run"
    print(
        f"{verb} {len(files)} files of {what} to {args.repo_id} ({'private' if args.private else 'public'}):"
    )
    for f in files:
        print(f"  {f}  " + ("(model card)" if f == CARD else f"({(folder / f).stat().st_size:,} bytes)"))
    if args.dry_run:
        print(f"\n--- {CARD} ---\n{card}")
    return 0
