"""`fashioncap eval --model-dir RUN --data DIR [--split test]`: caption a split, score it (RUN/eval/<split>/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fashioncap.commands.caption import add_generation_arguments

HELP = "caption a split with a trained run and score it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir", required=True, help="a trained run (adapter or merged model) or a Hub model id"
    )
    parser.add_argument("--data", required=True, help="data dir (docs/data.md layout)")
    parser.add_argument("--split", default="test", help="the split to caption and score (default: test)")
    parser.add_argument(
        "--out-dir", help="default: MODEL_DIR/eval/<split>, or outputs/eval/<id>/<split> for a Hub id"
    )
    add_generation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from fashioncap import rundir
    from fashioncap.evaluation import evaluate_run
    from fashioncap.inference import GENERATION_FLAGS

    overrides = {k: getattr(args, k) for k in GENERATION_FLAGS}
    metrics = evaluate_run(args.model_dir, args.data, args.split, args.out_dir, args.batch_size, **overrides)
    if metrics is None:
        return 0  # another rank of `accelerate launch`: the main process writes and prints the results
    out_dir = Path(args.out_dir) if args.out_dir else rundir.default_eval_dir(args.model_dir, args.split)
    print((out_dir / rundir.METRICS_MARKDOWN).read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(out_dir / f) for f in rundir.EVAL_FILES)}", file=sys.stderr)
    return 0
