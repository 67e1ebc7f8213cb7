"""`fashioncap caption IMAGE_OR_DIR ... --model-dir RUN`: caption images and folders, JSONL or CSV.

Exit status 0 when every input was captioned, 1 when any was skipped (listed with its reason), 2 on an error.

Under `accelerate launch -m fashioncap caption ...` every GPU captions a share of the files and the main
process writes all the lines, in input order."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys

from fashioncap.recipe_keys import GENERATION_DEFAULTS

HELP = "caption images or folders (exit 0: every input captioned; 1: any skipped)"


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
        help="CSV rows path,caption,error instead of JSONL (error: why the file was skipped)",
    )
    add_generation_arguments(parser)


def int_at_least(lowest: int):
    """An argparse type: an int of at least `lowest`, else the subcommand's one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{value} is not at least {lowest}")
        return value

    return parse


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Batch size and the generation flags shared with `fashioncap eval` (defaults: the run's recipe)."""
    parser.add_argument(
        "--batch-size", type=int_at_least(1), default=16, help="images captioned at once (default: 16)"
    )
    for name, what, lowest in (("num_beams", "beams", 1), ("max_new_tokens", "new tokens at most", 1),
                               ("min_new_tokens", "new tokens at least", 0)):  # fmt: skip
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=int_at_least(lowest),
            help=f"{what} per caption (default: the run's recipe, its fashioncap_config.json; for a model "
            f"without one, {GENERATION_DEFAULTS[name]})",
        )


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from fashioncap.inference import (
        GENERATION_FLAGS,
        NOT_AN_IMAGE,
        caption_paths_in_shards,
        generation_settings,
        iter_image_paths,
        load_captioner,
        process_state,
    )

    settings = generation_settings(args.model_dir, **{k: getattr(args, k) for k in GENERATION_FLAGS})
    model, processor = load_captioner(args.model_dir)
    paths = iter_image_paths(args.inputs)
    results = caption_paths_in_shards(model, processor, paths, args.batch_size, **settings)
    if not process_state().is_main_process:  # `accelerate launch`: caption this rank's share, write nothing
        for _ in results:
            pass
        return 0
    captioned = failed = not_images = 0
    with open_output(args.out) as out:
        writer = csv.writer(out) if args.csv else None
        if writer:
            writer.writerow(["path", "caption", "error"])
        for path, caption, error in tqdm(results, unit="img", disable=None, file=sys.stderr):
            if error is not None:
                failed += 1
                not_images += error == NOT_AN_IMAGE
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
    print(
        f"fashioncap caption: {captioned} captioned, {failed} skipped ({failed - not_images} unreadable, "
        f"{not_images} not an image file)",
        file=sys.stderr,
    )
    return 0 if captioned and not failed else 1  # a script can trust 0: every input has its caption
