"""`eval` and `caption` data-parallel under `accelerate launch` on 2 CPU ranks (gloo): each rank captions a share
of the images, and the main process writes what one process writes, once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_distributed import accelerate_launch

from fashioncap.cli import main
from fashioncap.evaluation import predict_split
from fashioncap.inference import load_captioner

FAST = {"num_beams": 2, "max_new_tokens": 6, "min_new_tokens": 1}
FAST_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
CPU_DDP = "accelerate_configs/cpu_ddp.yaml"


@pytest.mark.slow
def test_two_rank_eval_writes_the_predictions_of_one_process(tiny_model_dir, synthetic_dir, tmp_path):
    """8 test images, 3 per rank per chunk: the second chunk gives rank 0 two images and rank 1 one."""
    out = tmp_path / "eval"
    output = accelerate_launch(
        CPU_DDP, "-m", "fashioncap", "eval", "--model-dir", str(tiny_model_dir), "--data", str(synthetic_dir),
        "--split", "test", "--out-dir", str(out), "--batch-size", "3", *FAST_FLAGS,
    )  # fmt: skip
    model, processor = load_captioner(str(tiny_model_dir))
    one_process, limit_hits = predict_split(model, processor, synthetic_dir, "test", 3, **FAST)
    assert len({p["caption"] for p in one_process}) > 1, "identical captions would not show the order"
    assert json.loads((out / "predictions.json").read_text()) == one_process
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == len(one_process) == 8
    assert metrics["health"]["length_limit_share"] == sum(limit_hits) / 8
    assert output.count(f"# {tiny_model_dir} on {synthetic_dir} (test)") == 1, (
        "printed by the main process only"
    )


@pytest.mark.slow
def test_two_rank_caption_writes_the_lines_of_one_process_in_input_order(
    tiny_model_dir, synthetic_dir, tmp_path
):
    """6 images and a zero-byte file, 2 per rank per chunk: the last chunk of 3 is shared 2 + 1."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for source in sorted((synthetic_dir / "images" / "test").iterdir())[:6]:
        shutil.copy(source, folder / source.name)
    (folder / sorted(p.name for p in folder.iterdir())[2].replace(".", "_empty.")).write_bytes(b"")
    args = ["caption", "--model-dir", str(tiny_model_dir), str(folder), "--batch-size", "2", *FAST_FLAGS]
    assert main([*args, "--out", str(tmp_path / "one.jsonl")]) == 0
    output = accelerate_launch(CPU_DDP, "-m", "fashioncap", *args, "--out", str(tmp_path / "two.jsonl"))
    assert output.count("fashioncap caption: 6 captioned") == 1, (
        "counted and printed by the main process only"
    )
    lines = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in lines] == sorted(p.name for p in folder.iterdir()), "input order"
    assert [r.get("error") for r in lines].count("zero-byte file") == 1
    assert len({r.get("caption") for r in lines}) > 2, "identical captions would not show the order"
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
