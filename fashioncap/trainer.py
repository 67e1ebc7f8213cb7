"""FashionCapTrainer: MLE plus a REINFORCE term that rewards captions naming the item's attributes and category.

One training step (docs/design.md, "The training step"):
  1. encode the images once (with gradient: trials 3/4 train vision LoRA);
  2. sample H captions per image (no gradient, dropout off), each image's cross-attention K/V projected once,
     without dropout, and shared by its samples, its greedy baseline and their log-prob pass (fashioncap.decoding);
  3. score them with the reward functions, subtract the baseline (optionally scale each image's advantages);
  4. the decoder over the reference captions (MLE, its own K/V with dropout) and, with dropout off as when they
     were drawn, over the samples (their log-probabilities under the sampling temperature);
  5. loss = w_mle * L_mle + w_rl * L_rl (+ w_kl * KL to the base policy), L_rl = -mean_ij A_ij * log p(Y'_ij),
     log p normalised as `loss_type` says (`normalised_logprobs`).

Steps 1-5 run inside ONE forward call of the wrapped model: DDP and DeepSpeed arm their gradient hooks in
forward, so calling submodules directly would silently skip the gradient all-reduce.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import defaultdict

import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from transformers import Seq2SeqTrainer, TrainerCallback

from fashioncap.collapse_guard import CollapseGuard, rollout_health
from fashioncap.completions import completions_table, write_completions
from fashioncap.configs import FashionCapTrainingArguments
from fashioncap.data.collator import IGNORE_INDEX, MODEL_INPUTS, CaptionCollator
from fashioncap.decoding import (
    ImageMemory,
    decode,
    decoder_logits,
    dropout_disabled,
    encode_images,
    image_memory,
    text_decoder,
    truncated_samples,
)
from fashioncap.rewards import get_reward_funcs, prepare_rewards
from fashioncap.rl import (
    completion_mask,
    compute_baseline,
    normalised_logprobs,
    reinforce_loss,
    scale_by_group_rms,
    tied_groups,
    token_kl,
    token_logprobs,
)
from fashioncap.text import decode_captions
from fashioncap.zero3 import gathered_without_hooks

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def forward_replaced(module: torch.nn.Module, forward):
    """Route `module`'s forward through `forward` for the duration (instance attribute shadows the method)."""
    module.forward = forward
    try:
        yield
    finally:
        del module.forward


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Sample without dropout and with the KV cache (gradient checkpointing turns the cache off in train mode)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class SkipFlagReset(TrainerCallback):
    """Clears the trainer's skip-the-optimizer-step flag once the step is over (after every parameter group's
    step() call, however many the optimizer wrapper makes), so the next step runs."""

    def __init__(self, trainer: FashionCapTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._skip_optimizer_step = False


class FashionCapTrainer(Seq2SeqTrainer):
    # compute_loss normalises MLE by the token count of the whole accumulated, all-rank batch and divides the RL
    # term by the accumulation steps itself, so the Trainer must not divide again.
    loss_is_scaled_for_ga = True
    max_nonfinite_steps = 10

    args: FashionCapTrainingArguments

    def __init__(self, *args, category_wordmap: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, FashionCapTrainingArguments):
            raise TypeError(
                "FashionCapTrainer takes FashionCapTrainingArguments (the RL and generation settings)"
            )
        # Make the Trainer count `num_items_in_batch` (label tokens over accumulation steps and ranks); the model's
        # forward(**kwargs) would otherwise decide this, and the stock loss path mis-scales (docs/stack-traps.md).
        self.model_accepts_loss_kwargs = True
        self.reward_funcs = get_reward_funcs(self.args.reward_funcs)
        self.category_wordmap = category_wordmap or {}
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._nonfinite_in_a_row = 0
        self._skip_optimizer_step = False
        self._completions_step: int | None = None
        self._rollout_greedy: torch.Tensor | None = None
        self.collapse_guard = CollapseGuard(
            self.args.collapse_guard, self.args.rl_weight, self.args.loss_type
        )
        self.add_callback(self.collapse_guard)
        self.add_callback(SkipFlagReset(self))

    # --- plumbing ---

    def _captioner(self, model):
        """The captioner (of whichever family) inside DDP/DeepSpeed and PEFT wrappers."""
        model = self.accelerator.unwrap_model(model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    @property
    def _uses_rl(self) -> bool:
        return self.args.rl_weight > 0 and bool(self.reward_funcs)

    @property
    def _rl_started(self) -> bool:
        """SCST-style schedule: MLE alone for the first `rl_start` of the steps, so sampling starts from a policy
        that already writes the captions' style (every rank sees the same global step, so all agree)."""
        return self.state.global_step >= self.args.rl_start * self.state.max_steps

    def _is_zero3(self) -> bool:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return plugin is not None and plugin.zero_stage == 3

    def _decoder_gathered(self, captioner):
        """Under ZeRO-3 (with `zero3_gathered_decoding`): the decoder's weights gathered once for the block and
        DeepSpeed's per-module hooks lifted (fashioncap.zero3); elsewhere nothing."""
        gathered = self._is_zero3() and self.args.zero3_gathered_decoding
        return gathered_without_hooks(text_decoder(captioner).module, enabled=gathered)

    @property
    def _decode_kwargs(self) -> dict:
        """`synced_gpus` where DeepSpeed's hooks gather weights at every decoding step (ZeRO-3 without the gathered
        decoder: every rank must take every step, and a CUDA graph replay would skip the hooks); `cuda_graphs`
        None lets `decode` capture graphs where it can (CUDA, not synced), False never."""
        synced = self._is_zero3() and not self.args.zero3_gathered_decoding
        return dict(synced_gpus=synced, cuda_graphs=None if self.args.cuda_graphs else False)

    def _decode(self, sequences: torch.Tensor) -> list[str]:
        return decode_captions(self.processing_class, sequences)

    # --- rollout and rewards ---

    def score(self, completions: list[str], columns: dict) -> dict[str, torch.Tensor]:
        """Each reward function on the completions, with every data set column as a keyword argument (TRL's way)."""
        kwargs = {k: v.tolist() if torch.is_tensor(v) else v for k, v in columns.items()}
        return {
            name: torch.tensor(
                func(completions, category_wordmap=self.category_wordmap, **kwargs), dtype=torch.float32
            )
            for name, func in self.reward_funcs.items()
        }

    def _total_reward(self, rewards: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(w * rewards[name] for name, w in zip(self.reward_funcs, self.args.weights, strict=True))

    @torch.no_grad()
    def rollout(
        self, captioner, image_embeds: torch.Tensor, columns: dict, memory: ImageMemory | None = None
    ):
        """H sampled captions per image and their rewards; the baseline (and, for `greedy`, its captions).
        `memory`: the images' cross-attention K/V without dropout when the caller has them (else projected here).

        Under ZeRO-3 the decoder's partitioned weights are gathered once for the samples and the greedy baseline
        together (`_decoder_gathered`); with `zero3_gathered_decoding: false` each decoding step gathers them
        through DeepSpeed's module hooks instead, a collective, so every decode runs `synced_gpus`."""
        args = self.args
        h = args.num_samples
        repeated = {k: _repeat_each(v, h) for k, v in columns.items()}
        decoding = dict(max_new_tokens=args.max_sample_tokens, **self._decode_kwargs)
        with eval_mode(captioner), self._decoder_gathered(captioner):
            if memory is None:  # each image's cross-attention K/V, for all its samples
                memory = image_memory(captioner, image_embeds)
            samples = decode(
                captioner, memory, do_sample=True, num_return_sequences=h, temperature=args.sample_temperature,
                top_k=args.sample_top_k, **decoding,
            )  # fmt: skip
            greedy = decode(captioner, memory, **decoding) if args.baseline == "greedy" else None
        self._rollout_greedy = greedy  # the collapse guard's greedy captions, when the baseline drew them
        rewards = self.score(self._decode(samples), repeated)
        total = self._total_reward(rewards).to(image_embeds.device)
        greedy_total = (
            self._total_reward(self.score(self._decode(greedy), columns)).to(image_embeds.device)
            if greedy is not None
            else None
        )
        baseline = compute_baseline(total.view(-1, h), args.baseline, greedy_total).reshape(-1)
        return samples, rewards, total, baseline

    # --- the loss ---

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        columns = {k: inputs.pop(k) for k in list(inputs) if k not in MODEL_INPUTS}
        columns["image_id"] = columns.pop("image_ids")
        captioner = self._captioner(model)
        step = functools.partial(self._policy_step, model, captioner, columns, num_items_in_batch)
        with forward_replaced(captioner, step):
            outputs = model(**inputs)
        loss = self._skip_if_nonfinite(model, outputs["loss"])
        return (loss, outputs) if return_outputs else loss

    def _skip_if_nonfinite(self, model, loss: torch.Tensor) -> torch.Tensor:
        """A NaN/inf loss on ANY rank skips the optimizer step on EVERY rank (decided together, so no rank steps
        while another does not): this micro-batch contributes a zero gradient, the step is dropped, the skip is
        logged; `max_nonfinite_steps` in a row is an error."""
        nonfinite = torch.tensor(float(not torch.isfinite(loss)), device=loss.device)
        if self.model.training and self.accelerator.num_processes > 1:
            nonfinite = self.accelerator.reduce(nonfinite, reduction="sum")
        if not nonfinite.item():
            self._nonfinite_in_a_row = 0
            return loss
        self._nonfinite_in_a_row += 1
        self._skip_optimizer_step = True
        self._log_metric("train/skipped_nonfinite", 1.0)
        logger.warning("non-finite loss %s at step %d: step skipped", loss.item(), self.state.global_step)
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise FloatingPointError(
                f"{self._nonfinite_in_a_row} non-finite losses in a row (last at step {self.state.global_step}): "
                "lower the learning rate, check the data, or disable fp16"
            )
        return sum((p * 0).sum() for p in model.parameters() if p.requires_grad)

    def create_optimizer(self, *args, **kwargs):
        """The optimizer, whose step is skipped after a non-finite loss: a zero gradient alone would still let
        AdamW's momentum and weight decay move the weights."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if getattr(optimizer, "_fashioncap_guarded", False):
            return optimizer
        unguarded = optimizer.step

        def step(*step_args, **step_kwargs):
            # Not cleared here: DeepSpeed calls step() once per parameter group; `SkipFlagReset` clears it.
            if self._skip_optimizer_step:
                return None
            return unguarded(*step_args, **step_kwargs)

        optimizer.step = step
        optimizer._fashioncap_guarded = True
        return optimizer

    def _mle(self, captioner, logits, labels, num_items_in_batch):
        """(the MLE term of the loss, the local mean for logging, the local token count)."""
        targets = labels[:, 1:]
        n_local = targets.ne(IGNORE_INDEX).sum()
        mle_sum = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2),
            targets,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            label_smoothing=text_decoder(captioner).label_smoothing,
        )
        mle_mean = mle_sum / n_local.clamp(min=1)
        if num_items_in_batch is None:  # outside the training loop: a plain local mean
            return mle_mean, mle_mean, n_local
        # DDP averages gradients over ranks; the token count is global when averaged across devices.
        ranks = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
        return mle_sum / num_items_in_batch * ranks, mle_mean, n_local

    def _policy_step(
        self,
        model,
        captioner,
        columns,
        num_items_in_batch,
        pixel_values,
        input_ids,
        attention_mask,
        labels,
        **_,
    ):
        args = self.args
        image_embeds = encode_images(captioner, pixel_values)
        logits = decoder_logits(captioner, input_ids, attention_mask, image_embeds)
        mle_term, mle_mean, n_local = self._mle(captioner, logits, labels, num_items_in_batch)
        loss = args.mle_weight * mle_term
        self._log_metric("loss/mle", mle_mean, weight=n_local)
        if not (self._uses_rl and captioner.training and self._rl_started):
            return {"loss": loss}

        # Each image's cross-attention K/V without dropout, projected once: detached they draw the samples (the
        # values eval mode gives), with gradient they score them.
        with dropout_disabled(text_decoder(captioner).module):
            memory = image_memory(captioner, image_embeds)
        samples, rewards, total, baseline = self.rollout(
            captioner, image_embeds.detach(), columns, memory.detach()
        )
        sep = text_decoder(captioner).eos_token_id
        sample_mask = completion_mask(samples, sep)
        truncated = truncated_samples(samples, sep)
        # scored by the policy that drew them: no dropout (and none in gradient checkpointing's recomputation)
        sample_logits = decoder_logits(captioner, samples, sample_mask, memory, dropout=False)
        sample_token_logprobs = token_logprobs(sample_logits, samples, sample_mask, args.sample_temperature)
        logprobs = normalised_logprobs(
            sample_token_logprobs, sample_mask[:, 1:], args.loss_type, args.max_sample_tokens,
            self._mean_sample_tokens(sample_mask) if args.loss_type == "dapo" else None,
        )  # fmt: skip
        mean_reward = total.mean()  # before any scaling: what the rewards say
        tied = tied_groups(total, args.num_samples)
        if args.scale_rewards == "group":
            total, baseline = scale_by_group_rms(total, baseline, args.num_samples)
        rl_scale = 1.0 if num_items_in_batch is None else 1.0 / self.current_gradient_accumulation_steps
        keep = ~truncated if args.mask_truncated_completions else None
        rl_loss = reinforce_loss(logprobs, total, baseline, keep)
        collapsing = self.collapse_guard.active and self._check_collapse(
            captioner, memory.detach(), samples, truncated
        )
        self._log_completions(samples, rewards, total, baseline, columns, keep, force=collapsing)
        loss = loss + args.rl_weight * rl_loss * rl_scale
        if args.kl_weight:
            kl = self._kl_to_base(model, captioner, pixel_values, samples, sample_mask, sample_token_logprobs)
            loss = loss + args.kl_weight * kl * rl_scale
            self._log_metric("kl", kl)
        self._log_metric("loss/rl", rl_loss)
        for name, values in rewards.items():
            self._log_metric(f"reward/{name}", values.mean())
        self._log_metric("reward/total", mean_reward)
        self._log_metric("completions/mean_length", sample_mask[:, 1:].sum(1).float().mean())
        self._log_metric("completions/truncated_share", truncated.float().mean())
        self._log_metric("rl/tied_groups", tied.float().mean())
        return {"loss": loss}

    def _mean_sample_tokens(self, sample_mask: torch.Tensor) -> torch.Tensor:
        """The mean sampled-caption length over every rank's samples of this micro-batch (`dapo`'s token mean is
        over the whole batch; DDP then averages the ranks' gradients, equal sample counts on each)."""
        counts = torch.stack([sample_mask[:, 1:].sum(), torch.tensor(sample_mask.size(0))]).to(
            sample_mask.device
        )
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return counts[0].float() / counts[1].float()

    def _kl_to_base(
        self, model, captioner, pixel_values, samples, sample_mask, policy_logprobs
    ) -> torch.Tensor:
        """Mean per-token KL of the policy to the base model (the adapter disabled) on the sampled tokens, given
        the policy's token log-probabilities of them."""
        peft_model = self.accelerator.unwrap_model(model)
        with torch.no_grad(), peft_model.disable_adapter(), dropout_disabled(captioner):
            base_embeds = encode_images(captioner, pixel_values)
            base_logits = decoder_logits(captioner, samples, sample_mask, base_embeds, dropout=False)
        base = token_logprobs(base_logits, samples, sample_mask, self.args.sample_temperature)
        mask = sample_mask[:, 1:].float()
        return (token_kl(policy_logprobs, base) * mask).sum() / mask.sum().clamp(min=1)

    # --- logging ---

    def _check_collapse(self, captioner, memory: ImageMemory, samples, truncated) -> bool:
        """Log the sampled captions' health every RL step and the greedy ones' (the greedy baseline's captions,
        else decoded here from the step's K/V every `collapse_guard_steps` steps); True when the guard finds the
        greedy ones (what evaluation shows) collapsing for the first time (fashioncap.collapse_guard)."""
        health = {"sampled": rollout_health(self._decode(samples), truncated.tolist())}
        greedy, self._rollout_greedy = self._rollout_greedy, None
        if (
            greedy is None and self.state.global_step % self.args.collapse_guard_steps == 0
        ):  # alike on every rank
            with torch.no_grad(), eval_mode(captioner), self._decoder_gathered(captioner):
                greedy = decode(
                    captioner, memory, max_new_tokens=self.args.max_sample_tokens, **self._decode_kwargs
                )
        if greedy is not None:
            greedy_captions = self._decode(greedy)
            greedy_cut = truncated_samples(greedy, text_decoder(captioner).eos_token_id).tolist()
            health["greedy"] = rollout_health(greedy_captions, greedy_cut)
        for kind, figures in health.items():
            for name, value in figures.items():
                self._log_metric(f"health/{kind}_{name}", value)
        if greedy is None:
            return False
        return self.collapse_guard.check(self.state.global_step, health["greedy"], greedy_captions[0])

    def _log_completions(
        self, samples, rewards, total, baseline, columns, keep=None, force: bool = False
    ) -> None:
        """Every `log_completions_steps` RL steps (the first included), and at the step the collapse guard
        fires (`force`), a table of the main process's sampled captions to RUN/completions.jsonl and the
        trackers (fashioncap.completions)."""
        step, every, last = self.state.global_step, self.args.log_completions_steps, self._completions_step
        due = force or last is None or step - last >= every
        if not every or not self.is_world_process_zero() or not due:
            return
        self._completions_step = step
        tensorboard = next(
            (c.tb_writer for c in self.callback_handler.callbacks if getattr(c, "tb_writer", None)), None
        )
        table = completions_table(
            step,
            columns["image_id"],
            columns["caption"],
            self._decode(samples),
            rewards,
            total,
            baseline,
            keep,
        )
        write_completions(self.args.output_dir, table, tensorboard, "trackio" in self.args.report_to)

    def _log_metric(self, name: str, value, weight=1) -> None:
        """Accumulate a weighted value: `loss/mle` is weighted by its token count, so the logged mean is exact."""
        if self.model.training:
            value = value.detach() if torch.is_tensor(value) else value
            weight = float(weight)
            self._metrics[name].append((float(value) * weight, weight))

    def log(self, logs: dict, start_time: float | None = None) -> None:
        """Add each logged part to training logs: its weighted mean over the steps since the last log and all ranks."""
        if "loss" in logs:
            # Every rank gathers the same names (a part logged on one rank only, such as a skipped step, would
            # otherwise make the ranks gather tensors of different shapes): the union, zero where absent.
            names = sorted(set().union(*gather_object([sorted(self._metrics)])))
            if names:
                sums = [
                    [sum(v for v, _ in self._metrics[n]), sum(w for _, w in self._metrics[n])] for n in names
                ]
                totals = self.accelerator.gather(torch.tensor([sums], device=self.args.device)).sum(dim=0)
                logs.update(
                    {n: round((s / w).item(), 6) for n, (s, w) in zip(names, totals, strict=True) if w}
                )
            self._metrics.clear()
        super().log(logs, start_time)

    # --- evaluation: generate from the images only ---

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Captions from `pixel_values` alone. The stock seq2seq step would feed the reference tokens to generate."""
        inputs = self._prepare_inputs(inputs)
        image_ids = inputs["image_ids"]
        if prediction_loss_only:
            return None, None, None
        captioner = self._captioner(model)
        with torch.no_grad(), eval_mode(captioner):
            image_embeds = encode_images(captioner, inputs["pixel_values"])
            with self._decoder_gathered(captioner):
                generated = decode(
                    captioner, image_embeds, **self._decode_kwargs, **self.args.generate_kwargs()
                )
        return None, generated, image_ids


def _repeat_each(values, times: int):
    if torch.is_tensor(values):
        return values.repeat_interleave(times, dim=0)
    return [v for v in values for _ in range(times)]


def build_trainer(
    model,
    processor,
    args: FashionCapTrainingArguments,
    train_dataset=None,
    eval_dataset=None,
    *,
    category_wordmap: dict | None = None,
    max_length: int = 50,
    augment: bool = False,
    trainer_class: type[FashionCapTrainer] = FashionCapTrainer,
    **kwargs,
) -> FashionCapTrainer:
    """The trainer with its collator (caption tokens up to `max_length`, optional augmentation seeded by the
    run's seed and rank), its rewards prepared on the training split (`rewards.prepare_rewards`)."""
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=CaptionCollator(
            processor, max_length=max_length, augment=augment, seed=args.seed, rank=args.process_index
        ),
        processing_class=processor,
        category_wordmap=category_wordmap,
        **kwargs,
    )
    if train_dataset is not None:
        prepare_rewards(trainer.reward_funcs, train_dataset)
    return trainer
