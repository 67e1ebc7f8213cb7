"""`fashioncap caption IMAGE_OR_DIR ... --model-dir RUN`: caption images and folders, JSONL or CSV."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys

HELP = "caption images or folders"


@contextlib.contextmanager
def open_output(path: str | None):
    """stdout, or `path` written atomically: it appears only once every line is written."""
    from fashioncap.io_utils import atomic_open

    if path is None:
        yield sys.stdout
        return
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        yield f


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (recursive)"
    )
    parser.add_argument(
        "--model-dir", required=True, help="a trained run, a merged model dir, or a Hub model id"
    )
    parser.add_argument("--out", help="write here instead of stdout (JSONL, or CSV with --csv)")
    parser.add_argument(
        "--csv",
        action="store_true",
        help="CSV rows path,caption,error instead of JSONL (error: why it was skipped)",
    )
    add_generation_arguments(parser)


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Batch size and the generation flags shared with `fashioncap eval` (defaults: the run's recipe)."""
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-beams", type=int, help="default: the run's generation settings (3)")
    parser.add_argument("--max-new-tokens", type=int, help="default: the run's generation settings (50)")
    parser.add_argument("--min-new-tokens", type=int, help="default: the run's generation settings (5)")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from fashioncap.inference import (
        GENERATION_FLAGS,
        caption_paths,
        generation_settings,
        iter_image_paths,
        load_captioner,
    )

    settings = generation_settings(args.model_dir, **{k: getattr(args, k) for k in GENERATION_FLAGS})
    model, processor = load_captioner(args.model_dir)
    captioned = failed = 0
    with open_output(args.out) as out:
        writer = csv.writer(out) if args.csv else None
        if writer:
            writer.writerow(["path", "caption", "error"])
        results = caption_paths(model, processor, iter_image_paths(args.inputs), args.batch_size, **settings)
        for path, caption, error in tqdm(results, unit="img", disable=None, file=sys.stderr):
            if error is not None:
                failed += 1
                tqdm.write(f"fashioncap caption: skipped {path}: {error}", file=sys.stderr)
            else:
                captioned += 1
            if writer:
                writer.writerow([str(path), caption or "", error or ""])
            else:
                record = (
                    {"path": str(path), "caption": caption}
                    if error is None
                    else {"path": str(path), "error": error}
                )
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"fashioncap caption: {captioned} captioned, {failed} unreadable", file=sys.stderr)
    return 0 if captioned else 1
