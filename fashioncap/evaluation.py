"""`fashioncap eval`: caption a split with a trained run (or a base model, zero-shot) and score it.

Writes OUT/predictions.json (COCO results format), metrics.json (exactly what `fashioncap score` prints for
those predictions) and metrics.md. The three are built in a temporary directory and moved into place together
at the end, so an interrupted eval leaves the previous results (or none) and a rerun simply redoes it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

EVAL_DIR = "eval"
EVAL_FILES = ("predictions.json", "metrics.json", "metrics.md")
# The seed's table columns: what reports and model cards show.
HEADLINE_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "ALS", "SLS")


def default_out_dir(model_dir: str) -> Path:
    """RUN/eval for a local run or model dir; outputs/eval/<sanitised id> for a Hub id (zero-shot)."""
    path = Path(model_dir)
    if path.is_dir():
        return path / EVAL_DIR
    return Path("outputs") / EVAL_DIR / re.sub(r"[^A-Za-z0-9._-]+", "--", model_dir).strip("-.")


def format_score(value) -> str:
    """Four decimals; "n/a" for a metric that could not run (null) or was not computed."""
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def metrics_markdown(metrics: dict, heading: str) -> str:
    """A metric | score table; metrics that could not run are listed with their reason below it."""
    from fashioncap.metrics import METRIC_NAMES

    names = [*METRIC_NAMES, *(n for n in ("ALS", "SLS") if n in metrics)]
    rows = "\n".join(f"| {name} | {format_score(metrics.get(name))} |" for name in names)
    notes = "".join(
        f"\n- {name}: n/a ({reason})" for name, reason in (metrics.get("unavailable") or {}).items()
    )
    return f"{heading}\n\n| metric | score |\n|---|---|\n{rows}\n\n{metrics['num_images']} images.{notes}\n"


def predict_split(
    model, processor, data_dir: str | Path, split: str, batch_size: int, **generate_kwargs
) -> list[dict]:
    """Caption every image of the split once; COCO results records in the split's image order.

    Only the image column reaches the generator: the references are never within its reach.
    """
    from tqdm.auto import tqdm

    from fashioncap.data import group_references, load_captions
    from fashioncap.inference import generate_captions

    images = group_references(load_captions(data_dir, [split])[split]).select_columns(["image_id", "image"])
    captions = generate_captions(
        model, processor, (row["image"] for row in images), batch_size, **generate_kwargs
    )
    progress = tqdm(captions, total=len(images), desc=f"captioning {split}", unit="img", file=sys.stderr)
    return [{"image_id": i, "caption": c} for i, c in zip(images["image_id"], progress, strict=True)]


def _check_out_dir(out_dir: Path) -> None:
    """The output dir is replaced as a whole: refuse one that holds anything but a previous eval's files."""
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in EVAL_FILES)
        if foreign:
            raise FileExistsError(
                f"{out_dir} holds files eval did not write ({', '.join(foreign[:5])}): pick another --out-dir"
            )


def evaluate_run(
    model_dir: str,
    data_dir: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    **generation_overrides,
) -> dict:
    """Caption `split` with `model_dir`, score it, write the three eval files; returns the metrics object."""
    from fashioncap.data import references_file
    from fashioncap.inference import generation_settings, load_captioner
    from fashioncap.io_utils import atomic_directory, write_json_atomic, write_text_atomic
    from fashioncap.metrics.cli import score_files

    out_dir = Path(out_dir) if out_dir else default_out_dir(model_dir)
    _check_out_dir(out_dir)
    references = references_file(data_dir, split)
    settings = generation_settings(model_dir, **generation_overrides)
    model, processor = load_captioner(model_dir)
    predictions = predict_split(model, processor, data_dir, split, batch_size, **settings)
    with atomic_directory(out_dir, overwrite=True) as tmp:
        write_json_atomic(tmp / "predictions.json", predictions)
        metrics = score_files(references, tmp / "predictions.json")
        write_json_atomic(tmp / "metrics.json", metrics)
        heading = (
            f"# {model_dir} on {data_dir} ({split})\n\n"
            f"generation: {', '.join(f'{k}={v}' for k, v in settings.items())}, batch size {batch_size}"
        )
        write_text_atomic(tmp / "metrics.md", metrics_markdown(metrics, heading))
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fashioncap.inference import add_generation_arguments

    parser.add_argument(
        "--model-dir", required=True, help="a trained run (adapter or merged model) or a Hub model id"
    )
    parser.add_argument("--data", required=True, help="data dir (design.md layout)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out-dir", help="default: MODEL_DIR/eval, or outputs/eval/<id> for a Hub id")
    add_generation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from fashioncap.data import DataError
    from fashioncap.inference import GENERATION_FLAGS
    from fashioncap.modeling import ModelLoadError

    overrides = {k: getattr(args, k) for k in GENERATION_FLAGS}
    try:
        evaluate_run(args.model_dir, args.data, args.split, args.out_dir, args.batch_size, **overrides)
    except (DataError, ModelLoadError, FileExistsError) as err:
        print(f"fashioncap eval: error: {err}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(args.model_dir)
    print((out_dir / "metrics.md").read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(out_dir / f) for f in EVAL_FILES)}", file=sys.stderr)
    return 0
