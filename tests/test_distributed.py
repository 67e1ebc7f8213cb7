"""Loss scaling under gradient accumulation, 2-process DDP and DeepSpeed ZeRO-2/3, on CPU.

Every configuration trains the same tiny BLIP + LoRA for one optimizer step on the same 4 rows, with sampling made
deterministic per row (tests/distributed_worker.py): the logged loss and the gradient must be those of the global
batch's objective computed by hand, whatever the split into micro-batches and ranks. Captions of different lengths
make a per-micro-batch or per-rank token mean visibly wrong.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(worker.__file__).resolve()
ACCELERATE = Path(sys.executable).with_name("accelerate")
MODES = worker.MODES
# dapo's token mean is over one micro-batch's samples (all ranks'): under gradient accumulation the later
# micro-batches' samples are not drawn yet, so GA 2 is the mean of two token means, not the batch's token mean.
MODES_EXACT_UNDER_GA = tuple(m for m in MODES if m != "rl_dapo")
SEED_MODES = (
    "rl",
    "mle",
)  # the ZeRO runs check the sharding with the default loss_type (DDP checks them all)
# The first ZeRO run JIT-builds DeepSpeed's shm comm op (~35-100 s); keep the build where later runs find it.
TORCH_EXTENSIONS_DIR = Path.home() / ".cache" / "torch_extensions"
LAUNCH_TIMEOUT_S = 300


def assert_same_step(run: dict, grads: torch.Tensor | None, expected: dict, expected_grads: torch.Tensor):
    assert run["losses"][0] == pytest.approx(expected["losses"][0], rel=1e-5)
    assert run["grad_norms"][0] == pytest.approx(expected["grad_norms"][0], rel=1e-5)
    if grads is not None:
        torch.testing.assert_close(grads, expected_grads, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def reference() -> dict:
    """The objective and its gradient by hand, on the whole batch at once, per mode."""
    return {mode: worker.reference_one(mode) for mode in MODES}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """(batch, GA) -> mode -> (run, grads) from the Trainer in this process."""
    out = tmp_path_factory.mktemp("one_process")
    return {
        (batch, ga): {mode: worker.train_one(mode, batch, ga, steps=1, out=out)[:2] for mode in MODES}
        for batch, ga in ((4, 1), (2, 2))
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, tmp_path: Path, *worker_args: str, num_processes: int = 2) -> tuple[dict, Path]:
    """`accelerate launch` the worker; its result.json and output dir."""
    out = tmp_path / "out"
    accelerate_launch(config, str(WORKER), "--out", str(out), *worker_args, num_processes=num_processes)
    return json.loads((out / "result.json").read_text()), out


def accelerate_launch(config: str, *program: str, num_processes: int = 2) -> str:
    """`accelerate launch` a script (or `-m module`) with its arguments; its output (stdout, then stderr). On
    failure or timeout, fail with that output (and kill its whole process group)."""
    cmd = [
        str(ACCELERATE), "launch", "--config_file", str(REPO / config), "--num_processes", str(num_processes),
        "--main_process_port", str(free_port()), *program,
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(TORCH_EXTENSIONS_DIR)),
    }
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"timed out after {LAUNCH_TIMEOUT_S}s: {' '.join(cmd)}\n{stdout[-3000:]}\n{stderr[-6000:]}"
        )
    if proc.returncode != 0:
        pytest.fail(f"exit {proc.returncode}: {' '.join(cmd)}\n{stdout[-3000:]}\n{stderr[-6000:]}")
    return stdout + stderr


def load_grads(out: Path, mode: str) -> torch.Tensor:
    return torch.load(out / f"grads_{mode}.pt")


def test_every_micro_batch_split_has_unequal_token_counts():
    """Else a per-micro-batch (or per-rank) mean would equal the token mean and the tests below would prove little."""
    _, processor = worker.build_model()
    lengths = [len(processor.tokenizer(c).input_ids) for c in worker.CAPTIONS]
    total = sum(lengths)
    for half in itertools.combinations(lengths, len(lengths) // 2):
        assert 2 * sum(half) != total


@pytest.mark.parametrize("mode", MODES)
def test_trainer_logs_the_global_objective(one_process, reference, mode):
    """One process, batch 4: the logged loss and the gradient are the hand-computed objective's."""
    run, grads = one_process[4, 1][mode]
    assert_same_step(run, grads, *reference[mode])


@pytest.mark.parametrize("mode", MODES_EXACT_UNDER_GA)
def test_gradient_accumulation_matches_one_batch(one_process, reference, mode):
    """Batch 2 x GA 2 = batch 4 x GA 1: MLE normalised by the accumulated token count, RL divided by GA steps."""
    run, grads = one_process[2, 2][mode]
    assert_same_step(run, grads, *one_process[4, 1][mode])
    assert_same_step(run, grads, *reference[mode])


@pytest.mark.slow
@pytest.mark.parametrize("batch, ga", [(2, 1), (1, 2)], ids=["2x2", "2x1xGA2"])
def test_ddp_two_processes_match_one(tmp_path, one_process, reference, batch, ga):
    """accelerate_configs/cpu_ddp.yaml really starts 2 gloo ranks, and they step like one process on the same rows."""
    result, out = launch("accelerate_configs/cpu_ddp.yaml", tmp_path, "--batch", str(batch), "--ga", str(ga))
    assert (result["world_size"], result["backend"]) == (2, "gloo")
    assert result["distributed_type"] == "DistributedType.MULTI_CPU"
    for mode in MODES if ga == 1 else MODES_EXACT_UNDER_GA:
        assert_same_step(result["runs"][mode], load_grads(out, mode), *one_process[4, 1][mode])
        assert_same_step(result["runs"][mode], load_grads(out, mode), *reference[mode])


@pytest.mark.slow
def test_deepspeed_zero2_runs_on_cpu(tmp_path, reference):
    """ZeRO-2 through accelerate on 2 CPU ranks: 3 steps with finite losses; the first step is the objective's."""
    result, _ = launch(
        "accelerate_configs/zero2.yaml", tmp_path, "--batch", "2", "--steps", "3", "--modes", *SEED_MODES
    )
    assert (result["world_size"], result["distributed_type"]) == (2, "DistributedType.DEEPSPEED")
    for mode in SEED_MODES:
        run = result["runs"][mode]
        assert len(run["losses"]) == 3 and all(math.isfinite(x) for x in run["losses"] + run["grad_norms"])
        assert_same_step(run, None, *reference[mode])


@pytest.mark.slow
def test_deepspeed_zero3_with_rl_matches_the_objective_and_samples(tmp_path, reference):
    """ZeRO-3 on 2 CPU ranks: the first step's loss and gradient norm are the objective's (MLE and RL); with real
    sampling (the decoder's partitioned weights gathered once per rollout) training runs and stays finite."""
    result, _ = launch(
        "accelerate_configs/zero3.yaml",
        tmp_path / "fixed",
        "--batch",
        "2",
        "--steps",
        "2",
        "--modes",
        *SEED_MODES,
    )
    assert (result["world_size"], result["distributed_type"]) == (2, "DistributedType.DEEPSPEED")
    for mode in SEED_MODES:
        assert_same_step(result["runs"][mode], None, *reference[mode])
    sampled, _ = launch(
        "accelerate_configs/zero3.yaml", tmp_path / "sampled", "--batch", "2", "--steps", "2", "--modes", "rl",
        "--real-rollout",
    )  # fmt: skip
    run = sampled["runs"]["rl"]
    assert len(run["losses"]) == 2 and all(math.isfinite(x) for x in run["losses"] + run["grad_norms"])


@pytest.mark.slow
@pytest.mark.parametrize("decoding", ["gathered", "synced"])
def test_deepspeed_zero3_rollout_where_the_ranks_samples_end_at_different_lengths(tmp_path, decoding):
    """Each image's samples end after a length of its own (forced: worker.ForcedLengthTrainer), so one rank's
    samples always end before the other's. Gathered (the default): the decoder's weights are gathered once per
    rollout and each rank stops at its own length. Synced (`zero3_gathered_decoding: false`): every decoding step
    gathers the weights through DeepSpeed's hooks, a collective, so both ranks must take the same number of steps
    (no "collective mismatch", no hang). Either way the step's loss is one process's on the same 4 rows."""
    extra = ("--synced-decoding",) if decoding == "synced" else ()
    result, _ = launch(
        "accelerate_configs/zero3.yaml", tmp_path, "--batch", "2", "--modes", "rl", "--forced-lengths", *extra
    )
    expected, _, _ = worker.train_one("rl", 4, 1, steps=1, out=tmp_path / "one", forced_lengths=True)
    run = result["runs"]["rl"]
    assert run["logged"]["completions/mean_length"] == expected["logged"]["completions/mean_length"] == 3.5
    assert run["losses"][0] == pytest.approx(expected["losses"][0], rel=1e-5)


@pytest.mark.parametrize(
    "config, param_groups",
    [
        ("cpu_ddp", 1),
        pytest.param("zero3", 1, marks=pytest.mark.slow),
        pytest.param("zero2", 2, marks=pytest.mark.slow, id="zero2-two-param-groups"),
    ],
)
def test_a_nan_on_one_rank_skips_that_step_on_every_rank(tmp_path, config, param_groups):
    """Rank 1 alone gets a NaN loss at step 2: both ranks skip the optimizer step (weights stay identical across
    ranks), both log the skip under the same metric names (no gather of mismatched shapes: no hang), and training
    goes on to the last step. Under ZeRO-3 too, where the skipped step's zero gradient runs over partitioned
    parameters; and under ZeRO-2 with two parameter groups, where DeepSpeed calls the optimizer's step() once per
    group: no group may step."""
    extra = ("--second-group",) if param_groups > 1 else ()
    result, _ = launch(f"accelerate_configs/{config}.yaml", tmp_path, "--batch", "1", "--steps", "4", "--modes",
                       "mle", "--fault", "nan", "1", "2", *extra)  # fmt: skip
    run = result["runs"]["mle"]
    assert run["param_groups"] == param_groups
    assert run["global_step"] == 4 and run["skipped_steps"] == [2]
    assert len(set(run["digests"])) == 1, "the ranks' weights diverged"
    first, skipped, third, _ = run["step_digests"]
    assert skipped == first != third, "the skipped step moved the weights, or the next step did not"
    assert all(math.isfinite(x) for x in run["losses"][:1] + run["losses"][2:])


def test_a_sigterm_to_one_rank_makes_every_rank_save_the_same_step(tmp_path):
    """SIGTERM reaches rank 1 alone during step 2: the ranks agree, both stop after that step and save it."""
    result, out = launch("accelerate_configs/cpu_ddp.yaml", tmp_path, "--batch", "1", "--steps", "6", "--modes",
                         "mle", "--fault", "sigterm", "1", "2")  # fmt: skip
    run = result["runs"]["mle"]
    assert run["global_step"] == 2 and run["checkpoints"] == ["checkpoint-2"]
    assert (out / "trainer_mle" / "checkpoint-2" / "trainer_state.json").is_file()
    assert len(set(run["digests"])) == 1
