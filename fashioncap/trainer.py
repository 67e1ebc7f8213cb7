"""FashionCapTrainer: MLE plus a REINFORCE term that rewards captions naming the item's attributes and category.

One training step (docs/design.md, "The training step"):
  1. encode the images once (with gradient: trials 3/4 train vision LoRA);
  2. sample H captions per image from the detached image embeddings (no gradient, KV cache, one `generate`);
  3. score them with the reward functions, subtract the baseline;
  4. one decoder pass over the reference captions and the samples together: the MLE loss of the references
     and the summed log-probabilities of the sampled tokens;
  5. loss = w_mle * L_mle + w_rl * L_rl, with L_rl = -mean_ij (r_ij - b_ij) * log p(Y'_ij).

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
from transformers import Seq2SeqTrainer

from fashioncap.configs import FashionCapTrainingArguments
from fashioncap.data.collator import IGNORE_INDEX, MODEL_INPUTS, CaptionCollator
from fashioncap.rewards import get_reward_funcs

logger = logging.getLogger(__name__)


# --- the learning signal, as pure functions ---------------------------------------------------------------------


def compute_baseline(
    rewards: torch.Tensor, kind: str, greedy_rewards: torch.Tensor | None = None
) -> torch.Tensor:
    """Baselines for rewards of shape (images, H): the group mean (the seed's), leave-one-out, or greedy (SCST)."""
    if kind == "mean":
        return rewards.mean(dim=1, keepdim=True).expand_as(rewards)
    if kind == "loo":
        h = rewards.size(1)
        if h < 2:
            raise ValueError("the leave-one-out baseline needs at least 2 samples per image")
        return (rewards.sum(dim=1, keepdim=True) - rewards) / (h - 1)
    if kind == "greedy":
        if greedy_rewards is None:
            raise ValueError("the greedy baseline needs the rewards of the greedy captions")
        return greedy_rewards.reshape(-1, 1).expand_as(rewards)
    raise ValueError(f"unknown baseline {kind!r}")


def reinforce_loss(logprobs: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """-mean((r - b) * log p(Y')): its gradient is the REINFORCE estimate; rewards carry no gradient."""
    advantages = (rewards - baseline).detach().to(logprobs.dtype)
    return -(advantages.reshape(-1) * logprobs.reshape(-1)).mean()


def completion_mask(sequences: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for the start token and every sampled token up to and including the first [SEP]; 0 for the padding after."""
    is_eos = (sequences == eos_token_id).long()
    return ((is_eos.cumsum(dim=1) - is_eos) == 0).long()


def sequence_logprobs(logits: torch.Tensor, sequences: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probabilities of tokens 1..T given their prefixes (logits of shape (N, T, V))."""
    targets = sequences[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return -nll.sum(dim=1)


def pad_to(tensor: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return F.pad(tensor, (0, length - tensor.size(1)), value=value)


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
        # Make the Trainer count `num_items_in_batch` (label tokens over accumulation steps and ranks); BLIP's
        # forward(**kwargs) would otherwise decide this, and the stock loss path mis-scales (docs/stack-traps.md).
        self.model_accepts_loss_kwargs = True
        self.reward_funcs = get_reward_funcs(self.args.reward_funcs)
        self.category_wordmap = category_wordmap or {}
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._nonfinite_in_a_row = 0

    # --- plumbing ---

    def _blip(self, model):
        """The BlipForConditionalGeneration inside DDP/DeepSpeed and PEFT wrappers."""
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

    def _decode(self, sequences: torch.Tensor) -> list[str]:
        return self.processing_class.batch_decode(sequences, skip_special_tokens=True)

    def _generate(self, blip, image_embeds: torch.Tensor, **kwargs) -> torch.Tensor:
        """Decode from image embeddings (BLIP's own generate minus its vision pass)."""
        text = blip.config.text_config
        start = torch.full((image_embeds.size(0), 1), text.bos_token_id, device=image_embeds.device)
        return blip.text_decoder.generate(
            input_ids=start,
            attention_mask=torch.ones_like(start),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(
                image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device
            ),
            eos_token_id=text.sep_token_id,
            pad_token_id=text.pad_token_id,
            synced_gpus=self._is_zero3(),
            **kwargs,
        )

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
    def rollout(self, blip, image_embeds: torch.Tensor, columns: dict):
        """H sampled captions per image and their rewards; plus the baseline's inputs."""
        args = self.args
        h = args.num_samples
        repeated = {k: _repeat_each(v, h) for k, v in columns.items()}
        with eval_mode(blip):
            samples = self._generate(
                blip,
                image_embeds.repeat_interleave(h, dim=0),
                do_sample=True,
                num_beams=1,
                temperature=args.sample_temperature,
                top_k=args.sample_top_k,
                top_p=1.0,
                max_new_tokens=args.max_sample_tokens,
            )
            greedy = (
                self._generate(
                    blip, image_embeds, do_sample=False, num_beams=1, max_new_tokens=args.max_sample_tokens
                )
                if args.baseline == "greedy"
                else None
            )
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
        blip = self._blip(model)
        step = functools.partial(self._policy_step, blip, columns, num_items_in_batch)
        with forward_replaced(blip, step):
            outputs = model(**inputs)
        loss = self._skip_if_nonfinite(model, outputs["loss"])
        return (loss, outputs) if return_outputs else loss

    def _skip_if_nonfinite(self, model, loss: torch.Tensor) -> torch.Tensor:
        """A NaN/inf loss becomes a zero-gradient step (logged); `max_nonfinite_steps` in a row is an error."""
        if torch.isfinite(loss):
            self._nonfinite_in_a_row = 0
            return loss
        self._nonfinite_in_a_row += 1
        self._log_metric("train/skipped_nonfinite", 1.0)
        logger.warning("non-finite loss %s at step %d: step skipped", loss.item(), self.state.global_step)
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise FloatingPointError(
                f"{self._nonfinite_in_a_row} non-finite losses in a row (last at step {self.state.global_step}): "
                "lower the learning rate, check the data, or disable fp16"
            )
        return sum((p * 0).sum() for p in model.parameters() if p.requires_grad)

    def _policy_step(
        self, blip, columns, num_items_in_batch, pixel_values, input_ids, attention_mask, labels, **_
    ):
        image_embeds = blip.vision_model(pixel_values=pixel_values).last_hidden_state
        n_images = image_embeds.size(0)
        rl = self._uses_rl and blip.training and self._rl_started
        if rl:
            samples, rewards, total, baseline = self.rollout(blip, image_embeds.detach(), columns)
            length = max(input_ids.size(1), samples.size(1))
            sample_mask = completion_mask(samples, blip.config.text_config.sep_token_id)
            pad_id = blip.config.text_config.pad_token_id
            input_ids = torch.cat([pad_to(input_ids, length, pad_id), pad_to(samples, length, pad_id)])
            attention_mask = torch.cat([pad_to(attention_mask, length, 0), pad_to(sample_mask, length, 0)])
            labels = pad_to(labels, length, IGNORE_INDEX)
            encoder_states = torch.cat(
                [image_embeds, image_embeds.repeat_interleave(self.args.num_samples, 0)]
            )
        else:
            encoder_states = image_embeds
        logits = blip.text_decoder(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=encoder_states
        ).logits

        targets = labels[:, 1:]
        n_local = targets.ne(IGNORE_INDEX).sum()
        mle_sum = F.cross_entropy(
            logits[:n_images, :-1].float().transpose(1, 2),
            targets,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            label_smoothing=blip.config.text_config.label_smoothing,
        )
        mle_mean = mle_sum / n_local.clamp(min=1)
        if num_items_in_batch is None:  # outside the training loop: a plain local mean
            mle_term, rl_scale = mle_mean, 1.0
        else:
            # DDP averages gradients over ranks; the token count is global when averaged across devices.
            ranks = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
            mle_term = mle_sum / num_items_in_batch * ranks
            rl_scale = 1.0 / self.current_gradient_accumulation_steps
        loss = self.args.mle_weight * mle_term
        self._log_metric("loss/mle", mle_mean, weight=n_local)

        if rl:
            logprobs = sequence_logprobs(logits[n_images:], input_ids[n_images:], attention_mask[n_images:])
            rl_loss = reinforce_loss(logprobs, total, baseline)
            loss = loss + self.args.rl_weight * rl_loss * rl_scale
            self._log_metric("loss/rl", rl_loss)
            for name, values in rewards.items():
                self._log_metric(f"reward/{name}", values.mean())
            self._log_metric("reward/total", total.mean())
            self._log_metric("completions/mean_length", sample_mask[:, 1:].sum(1).float().mean())
        return {"loss": loss}

    # --- logging ---

    def _log_metric(self, name: str, value, weight=1) -> None:
        """Accumulate a weighted value: `loss/mle` is weighted by its token count, so the logged mean is exact."""
        if self.model.training:
            value = value.detach() if torch.is_tensor(value) else value
            weight = float(weight)
            self._metrics[name].append((float(value) * weight, weight))

    def log(self, logs: dict, start_time: float | None = None) -> None:
        """Add each logged part to training logs: its weighted mean over the steps since the last log and all ranks."""
        if "loss" in logs and self._metrics:
            names = sorted(self._metrics)
            sums = [[sum(v for v, _ in self._metrics[n]), sum(w for _, w in self._metrics[n])] for n in names]
            totals = self.accelerator.gather(torch.tensor([sums], device=self.args.device)).sum(dim=0)
            logs.update({n: round((s / w).item(), 6) for n, (s, w) in zip(names, totals, strict=True)})
            self._metrics.clear()
        super().log(logs, start_time)

    # --- evaluation: generate from the images only ---

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Captions from `pixel_values` alone. The stock seq2seq step would feed the reference tokens to generate."""
        inputs = self._prepare_inputs(inputs)
        image_ids = inputs["image_ids"]
        if prediction_loss_only:
            return None, None, None
        blip = self._blip(model)
        with torch.no_grad(), eval_mode(blip):
            image_embeds = blip.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
            generated = self._generate(blip, image_embeds, **self.args.generate_kwargs())
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
    """The trainer with its collator (caption tokens up to `max_length`, optional augmentation seeded by the run)."""
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=CaptionCollator(processor, max_length=max_length, augment=augment, seed=args.seed),
        processing_class=processor,
        category_wordmap=category_wordmap,
        **kwargs,
    )
