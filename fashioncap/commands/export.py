"""`fashioncap export --model-dir RUN --out DIR [--merge]`: a run as a folder Hugging Face users load as is."""

from __future__ import annotations

import argparse
import sys

HELP = "write a run as a folder transformers (--merge) or PEFT loads, with its processor and model card"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="a trained run (output_dir of `fashioncap train`)")
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="fold the LoRA into BLIP (PEFT merge_and_unload): loads with from_pretrained and pipeline, no PEFT",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run(args: argparse.Namespace) -> int:
    from fashioncap.export import export_run

    out = export_run(args.model_dir, args.out, merge=args.merge, overwrite=args.overwrite)
    what = "merged model" if args.merge else "weights (adapter or model)"
    print(f"fashioncap export: wrote the {what} of {args.model_dir} to {out} (its README.md says how to load it)",
          file=sys.stderr)  # fmt: skip
    return 0
