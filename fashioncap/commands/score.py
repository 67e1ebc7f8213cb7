"""`fashioncap score`: score COCO-results predictions against COCO-captions references, JSON on stdout.

Exit status 0 on success, 2 when the inputs break the contract (unknown images, missing or duplicate
predictions, unreadable files); the message names the images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "score predictions against references (COCO formats)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--references", required=True, type=Path, help="COCO captions JSON (annotations/test.json)"
    )
    parser.add_argument(
        "--predictions", required=True, type=Path, help='COCO results JSON: [{"image_id", "caption"}]'
    )
    parser.add_argument("--out", type=Path, help="also write the metrics JSON here (atomically)")
    parser.add_argument(
        "--categories",
        type=Path,
        help="categories.json (id -> name or [names]) for SLS; default: ../categories.json when the "
        "references lie in a data dir's annotations/",
    )


def run(args: argparse.Namespace) -> int:
    from fashioncap.io_utils import write_json_atomic
    from fashioncap.metrics.files import score_files

    result = score_files(args.references, args.predictions, args.categories)  # ScoreInputError: exit 2
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))
    return 0
