"""`fashioncap data {synthetic,facad,check,gaps}`: build a data dir, check one, or measure what FACAD descriptions
leave out. Heavy imports happen in `run`."""

from __future__ import annotations

import argparse
import json

HELP = "build or check a data dir (synthetic set, FACAD, your own COCO set); measure FACAD's caption gaps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="{synthetic,facad,check,gaps}", required=True)

    p = sub.add_parser(
        "synthetic", help="draw the synthetic fashion set (the built-in default; seconds on a CPU)"
    )
    p.add_argument("--out", required=True, help="data dir to create")
    p.add_argument("--train", type=int, default=1000, help="training images (default: %(default)s)")
    p.add_argument("--val", type=int, default=100, help="validation images (default: %(default)s)")
    p.add_argument("--test", type=int, default=200, help="test images (default: %(default)s)")
    p.add_argument(
        "--pretrain", type=int, default=2000, help="images with short generic captions (base model)"
    )
    p.add_argument(
        "--image-size", type=int, default=64, help="square images of this many pixels (at least 32)"
    )
    p.add_argument("--seed", type=int, default=0, help="the same seed draws the same set, byte for byte")
    p.add_argument(
        "--references",
        type=int,
        default=5,
        help="captions per train/val/test image, each from another template",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (after the build succeeds)"
    )

    p = sub.add_parser("facad", help="build a data dir from the FACAD meta file and its front images")
    p.add_argument("--meta", required=True, help="FACAD meta file (a JSON list of records, or JSON lines)")
    p.add_argument("--images", required=True, help="image root: <root>/<id>/<colour>/0.jpeg (FACAD layout)")
    p.add_argument("--out", required=True, help="data dir to create")
    p.add_argument(
        "--download", action="store_true", help="fetch missing front images from the record URLs first"
    )
    p.add_argument(
        "--train", type=int, default=10000, help="training items (default: %(default)s, the seed's)"
    )
    p.add_argument("--val", type=int, default=1000, help="validation items (default: %(default)s)")
    p.add_argument("--test", type=int, default=2000, help="test items (default: %(default)s)")
    p.add_argument(
        "--split-strategy",
        choices=("random", "order"),
        default="random",
        help="random: seeded shuffle of the usable items; order: meta-file order (train, then val, then test)",
    )
    p.add_argument("--image-size", type=int, default=384, help="images are resized to fit in SIZE x SIZE")
    p.add_argument("--max-words", type=int, default=50, help="skip captions longer than this many words")
    p.add_argument(
        "--max-shared-description",
        type=int,
        default=3,
        help="a description shared by more items is boilerplate and those items are skipped; fewer share a split "
        "(default: 3)",
    )
    p.add_argument(
        "--views",
        choices=("front", "all"),
        default="front",
        help="front: one image per item; all: every view of a training item's first colour (val/test stay "
        "front) (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random split (--split-strategy random)")
    p.add_argument("--workers", type=int, default=16, help="threads for downloading and re-encoding images")
    p.add_argument("--timeout", type=float, default=30.0, help="download timeout per request, seconds")
    p.add_argument("--retries", type=int, default=3, help="download attempts after the first one")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (after the build succeeds)"
    )

    p = sub.add_parser("check", help="validate a data dir (yours included) and print a report")
    p.add_argument("data_dir", help="the data dir to check (docs/data.md layout)")
    p.add_argument("--max-words", type=int, default=50, help="flag captions longer than this many words")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser(
        "gaps",
        help="measure what FACAD descriptions leave out (product word, colour, pattern, cut, non-visual text)",
    )
    p.add_argument("records", help="FACAD meta file or text sample: records with a title and a description")
    p.add_argument("--top", type=int, default=12, help="products and stand-in words to list (default: 12)")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "synthetic":
        from fashioncap.data.synthetic import build_synthetic

        out = build_synthetic(
            args.out,
            train=args.train,
            val=args.val,
            test=args.test,
            pretrain=args.pretrain,
            image_size=args.image_size,
            seed=args.seed,
            overwrite=args.overwrite,
            references=args.references,
        )
        print(json.dumps(json.loads((out / "build_report.json").read_text()), indent=2))
        return 0
    if args.data_command == "facad":
        from fashioncap.data.facad import build_facad

        out = build_facad(
            args.meta,
            args.images,
            args.out,
            download=args.download,
            train=args.train,
            val=args.val,
            test=args.test,
            split_strategy=args.split_strategy,
            image_size=args.image_size,
            max_words=args.max_words,
            max_shared_description=args.max_shared_description,
            views=args.views,
            seed=args.seed,
            workers=args.workers,
            timeout=args.timeout,
            retries=args.retries,
            overwrite=args.overwrite,
        )
        report = json.loads((out / "build_report.json").read_text())
        summary = {k: v for k, v in report.items() if k != "skipped"}
        summary["skipped"] = len(report["skipped"])
        print(json.dumps(summary, indent=2))
        print(f"details of skipped records: {out / 'build_report.json'}")
        return 0
    if args.data_command == "gaps":
        from fashioncap.data.facad_gaps import measure_gaps, read_records

        print(json.dumps(measure_gaps(read_records(args.records), top=args.top), indent=2))
        return 0
    from fashioncap.data.check import check_data_dir

    report = check_data_dir(args.data_dir, max_words=args.max_words)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1
