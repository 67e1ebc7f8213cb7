"""The learning signal of the RL term, as pure tensor functions: baselines, advantages and their scaling,
completion masks, token log-probabilities and their normalisation (`loss_type`), the REINFORCE loss and the KL
penalty.

`fashioncap.trainer.FashionCapTrainer` orchestrates (rollout, rewards, logging, the distributed plumbing) and
calls these; they know nothing of models, families or the Trainer. docs/design.md, "REINFORCE", says why each
choice is what it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fashioncap.data.collator import IGNORE_INDEX


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


def reinforce_loss(
    logprobs: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """-mean((r - b) * log p(Y')): its gradient is the REINFORCE estimate; rewards carry no gradient.
    `keep` (bool per sample) zeroes the advantage of the others, e.g. samples cut off at the length limit; the
    mean stays over all samples, so the scale does not depend on how many were dropped."""
    advantages = (rewards - baseline).detach().to(logprobs.dtype).reshape(-1)
    if keep is not None:
        advantages = advantages * keep.reshape(-1).to(advantages.dtype)
    return -(advantages * logprobs.reshape(-1)).mean()


def normalised_logprobs(
    token_logprobs: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    max_tokens: int,
    mean_tokens: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Each sample's log p(Y') divided as `loss_type` says, so that `reinforce_loss`'s mean over the N samples
    gives TRL's normalisation of the policy-gradient term (the normalisation is part of the RL dose):
      sequence_sum: sum_t log p (the per-sample sum: the gradient per token grows with the caption's length);
      grpo: sum_t log p / T_i (each sample's token mean, then the mean over samples);
      dapo: sum_t log p / mean_i T_i (one token mean over all the samples' tokens; `mean_tokens` is the mean
        length over every rank's samples, the local mean when None);
      dr_grpo: sum_t log p / max_tokens (a constant: TRL divides the batch's sum by N x max_completion_length).
    `token_logprobs` and `mask` are (N, T-1) over tokens 1..T (the [SEP] counts as a token)."""
    lengths = mask.sum(dim=1).to(token_logprobs.dtype)
    sums = token_logprobs.sum(dim=1)
    if loss_type == "sequence_sum":
        return sums
    if loss_type == "grpo":
        return sums / lengths.clamp(min=1)
    if loss_type == "dapo":
        mean = lengths.mean() if mean_tokens is None else mean_tokens
        return sums / torch.as_tensor(mean, dtype=sums.dtype).clamp(min=1)
    if loss_type == "dr_grpo":
        return sums / max_tokens
    raise ValueError(f"unknown loss_type {loss_type!r}")


def tied_groups(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """True for each image whose H sample rewards are all equal: with a group baseline (mean, loo) its
    advantages are all 0, so it gives the RL term no signal."""
    grouped = rewards.view(-1, group)
    return grouped.amax(dim=1) == grouped.amin(dim=1)


def completion_mask(sequences: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for the start token and every sampled token up to and including the first end token; 0 for the padding
    after. The start token never counts as the end (BART's decoder starts from its end token `</s>`)."""
    is_eos = (sequences == eos_token_id).long()
    is_eos[:, 0] = 0
    return ((is_eos.cumsum(dim=1) - is_eos) == 0).long()


def token_logprobs(
    logits: torch.Tensor, sequences: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log p of tokens 1..T given their prefixes, shape (N, T-1), 0 where `mask` is 0, under the distribution
    they were sampled from: softmax(logits / temperature) (logits of shape (N, T, V))."""
    targets = sequences[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
    return -F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2) / temperature,
        targets,
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )


def sequence_logprobs(
    logits: torch.Tensor, sequences: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Sum of the log-probabilities of tokens 1..T given their prefixes (see `token_logprobs`)."""
    return token_logprobs(logits, sequences, mask, temperature).sum(dim=1)


def scale_by_group_rms(
    rewards: torch.Tensor, baseline: torch.Tensor, group: int, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards and baseline divided by the root mean square of each image's H advantages r - b, so rewards of
    different ranges (CIDEr 0-10, ALS 0-1) give advantages of one scale. With the group-mean baseline that is
    the std of the H rewards (GRPO's scaling); unlike that std it is 0 only when every advantage is: H tied
    samples against a greedy caption that scored otherwise keep advantages of magnitude 1, not (r - b) / eps."""
    advantages = (rewards - baseline).view(-1, group)
    rms = advantages.square().mean(dim=1, keepdim=True).sqrt().expand(-1, group).reshape(-1)
    return rewards / (rms + eps), baseline / (rms + eps)


def token_kl(logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate on sampled tokens, k3 = exp(d) - d - 1 with d = ref - policy:
    non-negative and unbiased as a value (Schulman's estimator, as TRL's GRPO uses).

    Used directly as a loss (differentiated through the policy's log-probs, the samples held fixed), its expected
    gradient is not that of KL(policy || reference) but that of KL(reference || policy) per token: d/dtheta of
    E_pi[exp(d) - d - 1] over fixed samples is E_pi[(1 - ref/pi) grad log pi] = -E_ref[grad log pi], the gradient
    of KL(ref || pi). Like TRL's GRPO, the penalty therefore pulls the policy toward covering the reference's
    tokens (mass-covering) rather than the reverse KL's mode-seeking pull; the logged `kl` is the k3 value."""
    delta = reference_logprobs - logprobs
    return torch.exp(delta) - delta - 1
