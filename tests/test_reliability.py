"""Faults and numbers (issue 7): training survives kill -9 and SIGTERM, interrupted data builds and evals leave
nothing half-written, and degenerate rewards or a NaN loss never poison the weights.

Training faults run the real command line in a child process on a tiny recipe, kill it, resume it, and compare the
final adapter with an uninterrupted run of the same length: on CPU, one thread, fixed seed, the two are bitwise
equal (tolerance 0) with REINFORCE off and on, because the Trainer restores the RNG states (rng_state.pth) and the
data order (skip_first_batches) from the checkpoint.

The children run `python -m fashioncap train` (what `accelerate launch recipes/trialN.py` runs):
`fashioncap train --config X --key value` rejects every `--key value` override (see README.md, "Reliability").
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fashioncap.decoding import ImageMemory

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 6
RL = ["--reward_funcs", "als", "sls", "--rl_weight", "1.0", "--num_samples", "2", "--max_sample_tokens", "8"]
RECIPE = """\
tiny_model: true
lora_preset: decoder
lora_r: 4
data_dir: {data_dir}
max_length: 40
seed: 0
full_determinism: true
use_cpu: true
max_steps: {max_steps}
per_device_train_batch_size: 4
learning_rate: 1.0e-2
save_strategy: steps
save_steps: 2
eval_strategy: "no"
logging_steps: 1
report_to: none
do_predict: false
disable_tqdm: true
dataloader_num_workers: 0
"""


# --- child processes ---------------------------------------------------------------------------------------------


def child_env() -> dict:
    """One thread per child (the same in every run we compare), offline, unbuffered logs we can poll."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env.update(HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    return env


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A child in its own process group, so a kill reaches its helpers too (METEOR's JVM, download threads)."""
    with open(log, "wb") as f:
        return subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT, start_new_session=True
        )


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Poll until `condition()`; fail (with the child's output) if the child ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(
                f"child ended (exit {proc.returncode}) before the fault point:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"fault point not reached in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def kill_9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def run_ok(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def train_cmd(recipe: Path, out: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fashioncap",
        "train",
        "--config",
        str(recipe),
        "--output_dir",
        str(out),
        *overrides,
    ]


def checkpoints(run: Path) -> dict[int, Path]:
    """Complete checkpoints by step: trainer_state.json is the last file the Trainer writes into one."""
    found = {
        int(p.name.split("-")[1]): p for p in run.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
    }
    return dict(sorted(found.items()))


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


def assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    worst = max((got[k] - expected[k]).abs().max().item() for k in got)
    assert all(torch.equal(got[k], expected[k]) for k in got), (
        f"max abs difference {worst:.3g}, expected bitwise"
    )


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from fashioncap.data import build_synthetic

    return build_synthetic(tmp_path_factory.mktemp("rel") / "data", train=16, val=4, test=4, pretrain=8)


@pytest.fixture(scope="module")
def recipe(data_dir) -> Path:
    path = data_dir.parent / "recipe.yaml"
    path.write_text(RECIPE.format(data_dir=data_dir, max_steps=MAX_STEPS))
    return path


@pytest.fixture(scope="module")
def uninterrupted(recipe):
    """The reference runs, one per mode, trained once per module: mode -> run dir."""
    runs: dict[str, Path] = {}

    def get(mode: str) -> Path:
        if mode not in runs:
            out = recipe.parent / f"uninterrupted-{mode}"
            run_ok(train_cmd(recipe, out, "--save_steps", "1000", *(RL if mode == "rl" else [])))
            runs[mode] = out
        return runs[mode]

    return get


# --- kill -9 and SIGTERM during training -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mle", "rl"])
def test_kill_9_then_resume_matches_an_uninterrupted_run(recipe, uninterrupted, tmp_path, mode):
    extra = RL if mode == "rl" else []
    out, log = tmp_path / "run", tmp_path / "killed.log"
    proc = start(train_cmd(recipe, out, *extra), log)
    wait_for(lambda: 2 in checkpoints(out), proc, log)  # mid-epoch: resume must also skip the seen batches
    kill_9(proc)
    assert not (out / "adapter_model.safetensors").exists(), "the run was not interrupted"
    step, last = list(checkpoints(out).items())[-1]
    assert step < MAX_STEPS

    run_ok(train_cmd(recipe, out, *extra, "--resume_from_checkpoint", str(last)))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == MAX_STEPS
    final = adapter(out)
    assert not all(torch.equal(final[k], v) for k, v in adapter(last).items()), "training did not continue"
    assert_same_weights(final, adapter(uninterrupted(mode)))


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_exits_143_and_resumes(recipe, uninterrupted, tmp_path):
    out, log = tmp_path / "run", tmp_path / "preempted.log"
    proc = start(train_cmd(recipe, out, "--save_steps", "1000"), log)  # any checkpoint is the preemption's
    wait_for(lambda: "'loss'" in log.read_text(), proc, log)  # training has begun
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    text = log.read_text()
    assert "SIGTERM received" in text and "resume with --resume_from_checkpoint" in text
    saved = checkpoints(out)
    assert len(saved) == 1, f"expected one checkpoint from the preemption, found {list(saved)}"
    step, checkpoint = next(iter(saved.items()))
    assert 1 <= step < MAX_STEPS and f"stopped by SIGTERM at step {step}" in text
    assert not (out / "adapter_model.safetensors").exists()

    run_ok(train_cmd(recipe, out, "--save_steps", "1000", "--resume_from_checkpoint", str(checkpoint)))
    assert_same_weights(adapter(out), adapter(uninterrupted("mle")))


# --- interrupted data builds and evals ---------------------------------------------------------------------------


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 72), (seed * 20 % 255, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()


class SlowImages(BaseHTTPRequestHandler):
    """Serves /img/<id>.jpeg slowly enough that a kill lands mid-download."""

    hits: Counter = Counter()

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.partition("?")[0]
        SlowImages.hits[path] += 1
        time.sleep(0.25)
        body = _jpeg(int(Path(path).stem))
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client was killed
            pass


@pytest.fixture
def image_server():
    SlowImages.hits = Counter()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowImages)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow
def test_killed_facad_download_leaves_no_data_dir_and_no_broken_image_then_resumes(image_server, tmp_path):
    from fashioncap.data.check import check_data_dir
    from fashioncap.data.images import open_rgb

    records = [
        {"id": 100 + i, "images": [{"color": "Pale Pink", "0": f"{image_server}/img/{i}.jpeg?crop=pad&w=60&h=90"}],
         "description": f"a pale pink {'dress' if i % 2 else 'tee'} number {i}", "attr": ["pink", "nah"],
         "categoryid": 1 + i % 2, "category": "dress" if i % 2 else "tee"}
        for i in range(12)
    ]  # fmt: skip
    meta, images, out = tmp_path / "meta.json", tmp_path / "raw", tmp_path / "facad"
    meta.write_text(json.dumps(records))
    cmd = [sys.executable, "-m", "fashioncap.cli", "data", "facad", "--meta", str(meta), "--images", str(images),
           "--out", str(out), "--download", "--train", "8", "--val", "2", "--test", "2", "--image-size", "32",
           "--retries", "0"]  # fmt: skip
    log = tmp_path / "killed.log"
    proc = start([*cmd, "--workers", "1"], log)
    wait_for(lambda: len(list(images.rglob("0.jpeg"))) >= 3, proc, log)
    kill_9(proc)

    assert not out.exists(), "an interrupted build must leave no data dir"
    done = sorted(images.rglob("0.jpeg"))
    assert 3 <= len(done) < len(records)
    for path in images.rglob("*"):
        if path.is_file():  # every image under its final name is complete; a partial one only as *.part
            assert path.name == "0.jpeg" or path.name == "0.jpeg.part", path
            if path.name == "0.jpeg":
                open_rgb(path)

    run_ok([*cmd, "--workers", "2"])
    assert check_data_dir(out).ok
    fetched_before = {f"/img/{int(p.parent.parent.name) - 100}.jpeg" for p in done}
    assert all(SlowImages.hits[p] == 1 for p in fetched_before), "the rerun fetched a finished image again"
    assert set(SlowImages.hits) == {f"/img/{i}.jpeg" for i in range(12)}


@pytest.fixture(scope="module")
def tiny_model_dir(data_dir) -> Path:
    from fashioncap.data import load_captions
    from fashioncap.models.blip import build_tiny
    from fashioncap.text import caption_vocabulary

    captions = [c for split in load_captions(data_dir).values() for c in split["caption"]]
    model, processor = build_tiny(caption_vocabulary(captions))
    out = data_dir.parent / "tiny"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.mark.slow
def test_killed_eval_leaves_no_results_or_the_previous_ones_and_a_rerun_redoes_it(
    data_dir, tiny_model_dir, tmp_path
):
    from fashioncap.rundir import EVAL_FILES

    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "fashioncap.cli", "eval", "--model-dir", str(tiny_model_dir), "--data",
           str(data_dir), "--out-dir", str(out), "--num-beams", "1", "--max-new-tokens", "4",
           "--min-new-tokens", "1"]  # fmt: skip

    def kill_while_scoring(log: Path) -> None:
        """Kill -9 once captions are written to the temporary eval dir and the metrics are being computed."""
        proc = start(cmd, log)
        wait_for(lambda: any(tmp_path.glob(".eval.*.partial/predictions.json")), proc, log)
        kill_9(proc)

    kill_while_scoring(tmp_path / "first.log")
    assert not out.exists(), "a first eval killed mid-way must leave no eval dir"

    run_ok(cmd)
    results = {name: (out / name).read_bytes() for name in EVAL_FILES}
    assert sorted(p.name for p in out.iterdir()) == sorted(EVAL_FILES)
    assert len(json.loads(results["predictions.json"])) == 4
    assert json.loads(results["metrics.json"])["num_images"] == 4

    kill_while_scoring(tmp_path / "second.log")
    assert {name: (out / name).read_bytes() for name in EVAL_FILES} == results, "previous results changed"
    assert sorted(p.name for p in out.iterdir()) == sorted(EVAL_FILES)


# --- numbers: degenerate rewards and non-finite losses in the trainer --------------------------------------------


def make_trainer(data_dir, tmp_path, **training):
    """A FashionCapTrainer on the tiny BLIP with decoder LoRA, over the synthetic train split."""
    from fashioncap.configs import FashionCapTrainingArguments
    from fashioncap.data import load_captions, load_categories
    from fashioncap.models.blip import DECODER_TARGETS, build_tiny
    from fashioncap.models.lora import apply_lora
    from fashioncap.text import caption_vocabulary
    from fashioncap.trainer import build_trainer

    train = load_captions(data_dir, ["train"])["train"]
    model, processor = build_tiny(caption_vocabulary(train["caption"]))
    model = apply_lora(model, DECODER_TARGETS, r=4, dropout=0.0)
    args = FashionCapTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, report_to=[], remove_unused_columns=False,
        use_cpu=True, save_strategy="no", logging_steps=1, learning_rate=1e-2, disable_tqdm=True, **training,
    )  # fmt: skip
    return build_trainer(
        model, processor, args, train, category_wordmap=load_categories(data_dir), max_length=40
    )


def one_loss_and_grads(trainer):
    """compute_loss and backward on the first batch, in training mode (what one step does)."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch))
    loss.backward()
    return loss, [p.grad for p in trainer.model.parameters() if p.requires_grad]


def logged(trainer, loss) -> dict:
    """What the Trainer logs for the parts of that loss (`loss/rl`, `reward/als`, ...)."""
    trainer.log({"loss": loss.item()})
    return trainer.state.log_history[-1]


def rl_only(**kwargs) -> dict:
    return dict(rl_weight=1.0, mle_weight=0.0, num_samples=2, max_sample_tokens=6, **kwargs)


@pytest.mark.parametrize("baseline", ["mean", "loo", "greedy"])
def test_equal_rewards_in_every_group_give_a_zero_rl_loss_in_the_trainer(
    data_dir, tmp_path, monkeypatch, baseline
):
    from fashioncap import rewards

    monkeypatch.setitem(rewards.REWARD_FUNCS, "constant", lambda completions, **_: [0.5] * len(completions))
    torch.manual_seed(0)
    trainer = make_trainer(data_dir, tmp_path, **rl_only(reward_funcs=["constant"], baseline=baseline))
    loss, grads = one_loss_and_grads(trainer)
    assert loss.item() == 0.0 and logged(trainer, loss)["loss/rl"] == 0.0
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)


def test_empty_and_special_token_only_samples_score_zero_and_the_loss_stays_finite(
    data_dir, tmp_path, monkeypatch
):
    """Samples that stop at once ([DEC][SEP]) or hold only special tokens decode to "": ALS and SLS are 0."""
    torch.manual_seed(0)
    trainer = make_trainer(data_dir, tmp_path, **rl_only(reward_funcs=["als", "sls"]))
    tok = trainer.processing_class.tokenizer
    dec, sep, pad, cls = (tok.convert_tokens_to_ids(t) for t in ("[DEC]", "[SEP]", "[PAD]", "[CLS]"))
    special = torch.tensor([[dec, sep, pad, pad], [dec, cls, pad, sep]])
    assert trainer._decode(special) == ["", ""]

    def degenerate(model, image, num_return_sequences=1, **kwargs):  # image: K/V memory, or embeddings
        images = image.num_images if isinstance(image, ImageMemory) else image.size(0)
        return special[:1].repeat(images * num_return_sequences, 1)

    monkeypatch.setattr("fashioncap.trainer.decode", degenerate)
    loss, grads = one_loss_and_grads(trainer)
    logs = logged(trainer, loss)
    assert logs["reward/als"] == 0.0 and logs["reward/sls"] == 0.0 and logs["loss/rl"] == 0.0
    assert torch.isfinite(loss) and loss.item() == 0.0 and all(torch.isfinite(g).all() for g in grads)


def _poison_decoder(trainer, monkeypatch, poisoned_calls):
    """Make the decoder's logits NaN on the given (1-based) calls: one call per MLE-only training step."""
    head = trainer._captioner(trainer.model).text_decoder.cls
    original, calls = head.forward, itertools.count(1)

    def forward(*args, **kwargs):
        logits = original(*args, **kwargs)
        return logits * float("nan") if next(calls) in poisoned_calls else logits

    monkeypatch.setattr(head, "forward", forward)


def _trainable(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_a_nan_loss_skips_the_step_logs_it_and_training_goes_on(data_dir, tmp_path, monkeypatch, caplog):
    from transformers import TrainerCallback

    trainer = make_trainer(data_dir, tmp_path, max_steps=4, seed=0)
    initial, after_step = _trainable(trainer), {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            after_step[state.global_step] = _trainable(trainer)

    trainer.add_callback(Snapshot())
    _poison_decoder(trainer, monkeypatch, {1, 3})
    with caplog.at_level(logging.WARNING, logger="fashioncap.trainer"):
        trainer.train()

    assert trainer.state.global_step == 4
    skipped = [e["step"] for e in trainer.state.log_history if e.get("train/skipped_nonfinite")]
    assert skipped == [1, 3]
    assert sum("non-finite loss" in r.getMessage() for r in caplog.records) == 2
    # a poisoned step skips the optimizer step: nothing moves, not even by AdamW's momentum (step 3 follows a
    # real step 2) or its weight decay; the weights end finite and trained
    assert all(torch.equal(after_step[1][n], initial[n]) for n in initial)
    assert all(torch.equal(after_step[3][n], after_step[2][n]) for n in initial)
    final = _trainable(trainer)
    assert all(torch.isfinite(t).all() for t in final.values())
    assert any(not torch.equal(final[n], initial[n]) for n in initial)


def test_nan_losses_in_a_row_stop_training_with_a_clear_error(data_dir, tmp_path, monkeypatch):
    trainer = make_trainer(data_dir, tmp_path, max_steps=10, seed=0)
    trainer.max_nonfinite_steps = 3
    initial = _trainable(trainer)
    _poison_decoder(trainer, monkeypatch, set(range(1, 100)))
    with pytest.raises(FloatingPointError, match="3 non-finite losses in a row .*lower the learning rate"):
        trainer.train()
    assert trainer.state.global_step == 2  # two skipped steps, the third raised
    final = _trainable(trainer)
    assert all(torch.equal(final[n], initial[n]) for n in initial), "no NaN step may move the weights"


# --- load: captioning a folder runs in constant memory -----------------------------------------------------------


def test_a_childs_peak_rss_is_its_own_not_its_parents(monkeypatch):
    """The caption bench's child reports its own peak RSS: a child's rusage (ru_maxrss) counts the RSS of the
    process it was forked from, so a small child of a 512 MiB parent read as 512+ MiB."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.bench_caption_memory import own_peak_rss_mib, peak_rss_of_module

    ballast = b"\x01" * (512 * 2**20)
    assert own_peak_rss_mib() > 512
    assert peak_rss_of_module("platform", []) < 100  # a bare interpreter: ~10-20 MiB
    del ballast


@pytest.mark.slow
def test_captioning_5000_images_takes_no_more_memory_than_500(monkeypatch):
    """Peak RSS of `fashioncap caption` over 5,000 vs 500 images (bench/bench_caption_memory.py).

    Holding every decoded 32 px image and its 64 px pixel tensor would add ~250 MB at 5,000 (> 1.5x of ~400 MB).
    """
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.bench_caption_memory import run

    result = run()
    print(json.dumps(result))
    assert result["500"]["captions"] == 500 and result["5000"]["captions"] == 5000
    assert result["ratio"] <= 1.25, result
