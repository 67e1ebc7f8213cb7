"""The RL step under DeepSpeed ZeRO-3 over the same step under ZeRO-2: 2 CPU ranks over gloo, the tiny model.

Each variant is one `accelerate launch` of tests/distributed_worker.py (`--modes rl --real-rollout`: the real
FashionCapTrainer, H=2 sampled captions of up to 8 tokens per image, batch 2 per rank) timing every optimizer
step; the figure per variant is the median step after the warm-up steps, pooled over rounds. Variants:
ZeRO-2; ZeRO-3 with the decoder gathered once per decode (the default, `zero3_gathered_decoding: true`); ZeRO-3
with DeepSpeed's hooks gathering per module and token (`false`, every rank decoding in step: the path before).
The MLE step under both stages (`--modes mle`, no decoding) gives the floor: what ZeRO-3's per-module gathers in
the forward and backward passes cost without any rollout.
Rounds run the variants in alternating order (A B C, then C B A) so that load on the shared cores drifts
across all of them alike.

    python -m bench.run --only zero3
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"
VARIANTS = {  # name: (accelerate config, training mode, worker flags)
    "zero2": ("zero2", "rl", ()),
    "zero3": ("zero3", "rl", ()),
    "zero3_synced": ("zero3", "rl", ("--synced-decoding",)),
    "zero2_mle": ("zero2", "mle", ()),
    "zero3_mle": ("zero3", "mle", ()),
}
LAUNCH_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_seconds(variant: str, steps: int) -> list[float]:
    """Every optimizer step's wall seconds (rank 0) of one 2-rank launch of the worker."""
    config, mode, flags = VARIANTS[variant]
    accelerate = Path(sys.executable).with_name("accelerate")
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            str(accelerate), "launch", "--config_file", str(ROOT / "accelerate_configs" / f"{config}.yaml"),
            "--num_processes", "2", "--main_process_port", str(_free_port()), str(WORKER), "--out", out,
            "--batch", "2", "--steps", str(steps), "--modes", mode, "--real-rollout", *flags,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, check=False
        )
        if done.returncode:
            raise RuntimeError(f"{variant}: exit {done.returncode}: {done.stderr[-2000:]}")
        return json.loads((Path(out) / "result.json").read_text())["runs"][mode]["step_seconds"]


def run(rounds: int = 2, steps: int = 22, warmup: int = 2) -> dict:
    names = list(VARIANTS)
    measured: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else reversed(names):
            measured[name] += step_seconds(name, steps)[warmup:]
            print(f"[bench zero3] round {round_index + 1} {name}: done", file=sys.stderr, flush=True)
    median = {name: round(statistics.median(values), 4) for name, values in measured.items()}
    return {
        "rounds": rounds,
        "steps": steps,
        "warmup_steps": warmup,
        **{f"{name}_step_s": value for name, value in median.items()},
        "zero3_rl_over_zero2_rl": round(median["zero3"] / median["zero2"], 3),
        "zero3_synced_rl_over_zero2_rl": round(median["zero3_synced"] / median["zero2"], 3),
        "zero3_mle_over_zero2_mle": round(median["zero3_mle"] / median["zero2_mle"], 3),
        "all_step_s": measured,
    }
