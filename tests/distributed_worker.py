"""One FashionCapTrainer run on a tiny deterministic BLIP, for the loss-scaling tests in test_distributed.py.

Launched as a script (plain `python`, or `accelerate launch` for DDP / DeepSpeed). Every configuration sees the
same model, the same 4 rows and, per row, the same sampled captions and rewards (`FixedRolloutTrainer`), so the
logged loss and gradient of one optimizer step must agree whatever the per-device batch, GA steps or rank count.
`--reference` computes the objective by hand on the whole batch instead, without the Trainer: the value that
every Trainer configuration has to log.

Writes (rank 0) OUT/result.json: {"world_size", "backend", "distributed_type", "runs": {mode: {"losses",
"grad_norms", ...}}} and OUT/grads_<mode>.pt (the flattened gradient of the first step, when it lives in p.grad).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from accelerate.utils import gather_object
from datasets import Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage
from transformers import TrainerCallback

from fashioncap.configs import FashionCapTrainingArguments
from fashioncap.data.collator import IGNORE_INDEX, CaptionCollator
from fashioncap.models.blip import SPECIAL_TOKENS, build_tiny, lora_target_regex
from fashioncap.models.lora import apply_lora
from fashioncap.rl import compute_baseline, reinforce_loss
from fashioncap.text import caption_vocabulary
from fashioncap.train import PreemptionCallback
from fashioncap.trainer import FashionCapTrainer, build_trainer

SEED = 0
NUM_SAMPLES = 2
# Different lengths, and every 2+2 split has unequal token counts: per-micro-batch means would not match.
CAPTIONS = [
    "a red dress",
    "black leather ankle boots",
    "a white knit sweater with a round neck",
    "a long sleeve blue cotton shirt with buttons a pointed collar and one chest pocket",
]
CATEGORIES = [1, 2, 3, 4]
WORDMAP = {1: "dress", 2: "boots", 3: "sweater", 4: "shirt"}


def build_dataset() -> Dataset:
    rng = np.random.default_rng(SEED)
    images = [PILImage.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in CAPTIONS]
    features = Features(
        image_id=Value("int64"),
        image=Image(),
        caption=Value("string"),
        attributes=Sequence(Value("string")),
        category=Value("int64"),
    )
    return Dataset.from_dict(
        {
            "image_id": list(range(len(CAPTIONS))),
            "image": images,
            "caption": CAPTIONS,
            "attributes": [c.split()[1:3] for c in CAPTIONS],
            "category": CATEGORIES,
        },
        features=features,
    )


def build_model(second_group: bool = False):
    """Tiny BLIP + LoRA on decoder and vision, with lora_B made non-zero so the gradient reaches lora_A too.
    `second_group`: the decoder's embedding LayerNorm trained too, which the Trainer puts in a second optimizer
    parameter group (no weight decay)."""
    model, processor = build_tiny(caption_vocabulary(CAPTIONS), seed=SEED)
    target = lora_target_regex("decoder+vision", model.config.vision_config.num_hidden_layers, 2)
    model = apply_lora(model, target, r=4, alpha=8, dropout=0.0)
    if second_group:
        model.get_base_model().text_decoder.bert.embeddings.LayerNorm.requires_grad_(True)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model, processor


def fixed_rollout(captions: list[str], text_config, reward_args: FashionCapTrainingArguments):
    """Per row (keyed by its caption) H fixed token sequences of different lengths and fixed rewards."""
    first_word = len(SPECIAL_TOKENS)
    sequences, rewards = [], {name: [] for name in reward_args.reward_funcs}
    for caption in captions:
        row = CAPTIONS.index(caption)
        for j in range(reward_args.num_samples):
            rng = random.Random(1000 * row + j)
            tokens = [rng.randrange(first_word, text_config.vocab_size) for _ in range(1 + (row + 3 * j) % 6)]
            sequences.append([text_config.bos_token_id, *tokens, text_config.sep_token_id])
            for k, name in enumerate(reward_args.reward_funcs):
                rewards[name].append(((row * 3 + j * 5 + k) % 7) / 6)
    length = max(len(s) for s in sequences)
    samples = torch.tensor([s + [text_config.pad_token_id] * (length - len(s)) for s in sequences])
    rewards = {name: torch.tensor(values) for name, values in rewards.items()}
    total = sum(
        w * rewards[name] for name, w in zip(reward_args.reward_funcs, reward_args.weights, strict=True)
    )
    baseline = compute_baseline(total.view(-1, reward_args.num_samples), reward_args.baseline).reshape(-1)
    return samples, rewards, total, baseline


class FixedRolloutTrainer(FashionCapTrainer):
    """The real trainer, with sampling replaced by `fixed_rollout` so runs differ only in how work is split."""

    @torch.no_grad()
    def rollout(self, blip, image_embeds, columns, memory=None):
        text = blip.config.text_config
        samples, rewards, total, baseline = fixed_rollout(columns["caption"], text, self.args)
        return samples.to(image_embeds.device), rewards, total.to(image_embeds.device), baseline


class ForcedLengthTrainer(FashionCapTrainer):
    """The real rollout (decode under ZeRO-3's parameter hooks), with the decoder's next-token logits forced so
    that every sample is a fixed token sequence ending with [SEP] after `1 + row` tokens (row: the image's index
    in CAPTIONS). The rollout is then deterministic (a 2-rank run equals one process) and a rank's samples end
    at the length of its longest image: the two ranks' decode loops stop at different steps unless synced."""

    def rollout(self, blip, image_embeds, columns, memory=None):
        decoder = blip.text_decoder
        plan = [CAPTIONS.index(c) for c in columns["caption"]]
        h, sep, first_word = self.args.num_samples, decoder.config.sep_token_id, len(SPECIAL_TOKENS)
        original, steps = decoder.cls.forward, iter(range(10**6))

        def forced(hidden):
            logits = original(hidden)
            if logits.dim() != 2:  # a teacher-forced pass (log-probs): the real distribution
                return logits
            position = next(steps)
            tokens = [
                sep if position >= 1 + plan[r // h] else first_word + (7 * r + 3 * position) % 5
                for r in range(logits.size(0))
            ]
            forced_tokens = torch.tensor(tokens, device=logits.device)[:, None]
            return torch.full_like(logits, float("-inf")).scatter(1, forced_tokens, 0.0)

        decoder.cls.forward = forced
        try:
            return super().rollout(blip, image_embeds, columns, memory)
        finally:
            del decoder.cls.forward


class GradCapture(TrainerCallback):
    """The flattened gradient of the first optimizer step (after the DDP all-reduce; ZeRO-2 keeps none in p.grad)."""

    def __init__(self):
        self.grads: torch.Tensor | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = [p for p in model.parameters() if p.requires_grad]
        if state.global_step == 0 and all(p.grad is not None for p in params):
            self.grads = torch.cat([p.grad.detach().reshape(-1).float().cpu() for p in params])


# "rl" is the sequence-sum REINFORCE term; "rl_<loss_type>" each other normalisation (configs.LOSS_TYPES).
MODES = ("rl", "mle", "rl_grpo", "rl_dapo", "rl_dr_grpo")


def rl_settings(mode: str) -> dict:
    if mode.startswith("rl"):
        loss_type = mode.removeprefix("rl_") if mode != "rl" else "sequence_sum"
        return dict(reward_funcs=["als", "sls"], rl_weight=1.0, num_samples=NUM_SAMPLES, max_sample_tokens=8,
                    loss_type=loss_type)  # fmt: skip
    return {}


class StepTimes(TrainerCallback):
    """Wall seconds of every optimizer step (bench/bench_zero3.py reads them)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(round(time.perf_counter() - self._started, 4))


def divisors_by_hand(loss_type: str, lengths: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """What each sample's summed log p is divided by, per TRL's normalisations (see fashioncap.trainer)."""
    lengths = lengths.float()
    return {
        "sequence_sum": torch.ones_like(lengths),
        "grpo": lengths,
        "dapo": lengths.mean().expand_as(lengths),
        "dr_grpo": torch.full_like(lengths, max_tokens),
    }[loss_type]


class StepDigests(TrainerCallback):
    """`trainable_digest` after every optimizer step (every rank computes it: a collective under ZeRO-3)."""

    def __init__(self):
        self.digests: list[str] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.digests.append(trainable_digest(model))


class Fault(TrainerCallback):
    """On rank `rank` only, at step `step`: a NaN loss (`kind` "nan") or a SIGTERM to the process ("sigterm")."""

    def __init__(self, kind: str, rank: int, step: int, trainer=None):
        self.kind, self.rank, self.step, self.trainer = kind, rank, step, trainer
        self.active = False

    def on_step_begin(self, args, state, control, **kwargs):
        mine = args.process_index == self.rank and state.global_step + 1 == self.step
        self.active = mine and self.kind == "nan"
        if mine and self.kind == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)

    def poison(self, head):
        original = head.forward

        def forward(*args, **kwargs):
            logits = original(*args, **kwargs)
            return logits * float("nan") if self.active else logits

        head.forward = forward


def trained_param_groups(trainer) -> int:
    """How many of the Trainer's optimizer parameter groups (weight decay or not) hold trained parameters (read
    from the names: under ZeRO-3 the optimizer's own groups hold flat partitions)."""
    decay = set(trainer.get_decay_parameter_names(trainer.model))
    return len({name in decay for name, p in trainer.model.named_parameters() if p.requires_grad})


def trainable_digest(model) -> str:
    """A hash of the trainable weights: equal on every rank while they are kept in step (under ZeRO-3, of the
    whole weights, gathered: every rank calls this)."""
    params = [p for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)]
    partitioned = any(hasattr(p, "ds_id") for p in params)
    digest = hashlib.sha256()
    with deepspeed.zero.GatheredParameters(params) if partitioned else contextlib.nullcontext():
        for param in params:
            digest.update(param.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def train_one(
    mode: str,
    batch: int,
    ga: int,
    steps: int,
    out: Path,
    real_rollout: bool = False,
    fault: Fault | None = None,
    forced_lengths: bool = False,
    second_group: bool = False,
    synced_decoding: bool = False,
) -> tuple[dict, torch.Tensor | None, dict]:
    model, processor = build_model(second_group)
    args = FashionCapTrainingArguments(
        output_dir=str(out / f"trainer_{mode}"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=ga,
        max_steps=steps,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        max_grad_norm=1e9,  # report the norm, never clip
        logging_steps=1,
        save_strategy="no",
        save_only_model=False,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=SEED,
        # Without it, ranks started by accelerate's multi-GPU launcher on a CPU machine each train alone
        # (PartialState(cpu=False) finds no GPU: DistributedType.NO, world_size 1, half the data each).
        use_cpu=not torch.cuda.is_available(),
        zero3_gathered_decoding=not synced_decoding,
        **rl_settings(mode),
    )
    capture = GradCapture()
    step_times = StepTimes()
    trainer = build_trainer(
        model,
        processor,
        args,
        build_dataset(),
        max_length=32,
        category_wordmap=WORDMAP,
        trainer_class=ForcedLengthTrainer
        if forced_lengths
        else FashionCapTrainer
        if real_rollout
        else FixedRolloutTrainer,
        callbacks=[capture, step_times],
    )
    steps_digests = StepDigests()
    if fault is not None:
        fault.poison(trainer._captioner(trainer.model).text_decoder.cls)
        trainer.add_callback(fault)
        trainer.add_callback(PreemptionCallback())
        trainer.add_callback(steps_digests)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if trainer.args.world_size != launched:  # the silent failure: every rank trains alone on part of the data
        raise RuntimeError(
            f"{launched} ranks launched but the Trainer sees world_size {trainer.args.world_size}"
        )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    run = {
        "losses": [entry["loss"] for entry in logs],
        "grad_norms": [entry["grad_norm"] for entry in logs],
        "logged": logs[0],
        "skipped_steps": [entry["step"] for entry in logs if entry.get("train/skipped_nonfinite")],
        "global_step": trainer.state.global_step,
        "digests": gather_object([trainable_digest(trainer.model)]),
        "step_digests": steps_digests.digests,
        "checkpoints": sorted(p.name for p in Path(args.output_dir).glob("checkpoint-*")),
        "param_groups": trained_param_groups(trainer),
        "step_seconds": step_times.seconds,
    }
    env = {
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "backend": dist.get_backend() if dist.is_initialized() else None,
    }
    return run, capture.grads, env


def reference_one(mode: str) -> tuple[dict, torch.Tensor]:
    """The objective by hand on all rows at once: token-mean MLE plus -mean_ij (r_ij - b_ij) log p(Y'_ij) / d_ij,
    d_ij as the mode's loss_type says (`divisors_by_hand`)."""
    model, processor = build_model()
    rows = list(build_dataset())
    batch = CaptionCollator(processor, max_length=32)(rows)
    blip = model.get_base_model()
    image_embeds = blip.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
    loss = blip.text_decoder(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        encoder_hidden_states=image_embeds,
        labels=batch["labels"],
    ).loss
    reward_args = FashionCapTrainingArguments(output_dir="unused", use_cpu=True, **rl_settings(mode))
    if mode.startswith("rl"):
        text = blip.config.text_config
        samples, _, total, baseline = fixed_rollout(batch["caption"], text, reward_args)
        mask = (samples != text.pad_token_id).long()
        neg_logp = blip.text_decoder(
            input_ids=samples,
            attention_mask=mask,
            encoder_hidden_states=image_embeds.repeat_interleave(reward_args.num_samples, 0),
            labels=samples.masked_fill(mask == 0, IGNORE_INDEX),
            reduction="none",
        ).loss
        divisors = divisors_by_hand(reward_args.loss_type, mask[:, 1:].sum(1), reward_args.max_sample_tokens)
        loss = loss + reward_args.rl_weight * reinforce_loss(-neg_logp / divisors, total, baseline)
    loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
    return {"losses": [loss.item()], "grad_norms": [grads.norm().item()]}, grads


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=4, help="per-device train batch size")
    parser.add_argument("--ga", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--reference", action="store_true", help="the objective by hand, no Trainer")
    parser.add_argument("--real-rollout", action="store_true", help="sample captions (not the fixed rollout)")
    parser.add_argument(
        "--forced-lengths", action="store_true", help="the real rollout, samples forced to per-image lengths"
    )
    parser.add_argument(
        "--second-group",
        action="store_true",
        help="train a LayerNorm too: a second optimizer parameter group",
    )
    parser.add_argument(
        "--synced-decoding",
        action="store_true",
        help="zero3_gathered_decoding false: under ZeRO-3, DeepSpeed's hooks gather weights at every token",
    )
    parser.add_argument("--fault", nargs=3, metavar=("KIND", "RANK", "STEP"), help="nan|sigterm on one rank")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # CPU ranks share 2 cores: more threads per rank is much slower

    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"runs": {}}
    grads: dict[str, torch.Tensor] = {}
    for mode in args.modes:
        if args.reference:
            run, grads[mode] = reference_one(mode)
            env = {"world_size": 1, "distributed_type": "reference", "backend": None}
        else:
            fault = Fault(args.fault[0], int(args.fault[1]), int(args.fault[2])) if args.fault else None
            run, grads[mode], env = train_one(
                mode, args.batch, args.ga, args.steps, args.out, args.real_rollout, fault, args.forced_lengths,
                args.second_group, args.synced_decoding,
            )  # fmt: skip
        result.update(env)
        result["runs"][mode] = run
    if not dist.is_initialized() or dist.get_rank() == 0:
        for mode, vector in grads.items():
            if vector is not None:
                torch.save(vector, args.out / f"grads_{mode}.pt")
        (args.out / "result.json").write_text(json.dumps(result, indent=1))
    if dist.is_initialized():
        # Every rank leaves together, then skips interpreter teardown: this worker runs two Trainers (two DDP
        # wrappers over one gloo group) per process, and tearing them down at exit intermittently aborted a
        # rank ("terminate called without an active exception") after its results were written.
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
