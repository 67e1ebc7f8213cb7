"""The learning signal: REINFORCE against hand-computed values, baselines, masks, and what each trial trains."""

import json
import math
import re

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import fashioncap.trainer as trainer_module
from fashioncap.completions import read_completions
from fashioncap.configs import FashionCapTrainingArguments, load_config
from fashioncap.data.collator import IGNORE_INDEX, CaptionCollator
from fashioncap.decoding import truncated_samples
from fashioncap.models.blip import DECODER_TARGETS, build_tiny, lora_target_regex
from fashioncap.models.lora import apply_lora
from fashioncap.rl import (
    completion_mask,
    compute_baseline,
    normalised_logprobs,
    reinforce_loss,
    scale_by_group_rms,
    sequence_logprobs,
    tied_groups,
    token_kl,
    token_logprobs,
)
from fashioncap.trainer import build_trainer

CAPTIONS = ["a red dress with short sleeve", "a blue tee", "a green striped bag", "a pair of black boots"]
WORDMAP = {1: "dress", 2: "tee", 3: "bag", 4: ["boot", "boots"]}


# --- pure functions ---------------------------------------------------------------------------------------------


def test_reinforce_loss_value_and_gradient_by_hand():
    """Policy softmax(theta) over 3 actions; 2 images x 2 samples; mean baseline per image.

    logp = log softmax(theta)[a]; L = -1/N sum (r - b) logp; dL/dtheta = -1/N sum (r - b)(onehot(a) - p).
    """
    theta = torch.tensor([0.5, -0.25, 1.0], requires_grad=True)
    actions = torch.tensor([0, 2, 1, 1])
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25])  # images: (1.0, 0.0), (0.5, 0.25)
    logp = torch.log_softmax(theta, dim=0)[actions]
    baseline = compute_baseline(rewards.view(2, 2), "mean").reshape(-1)
    assert baseline.tolist() == [0.5, 0.5, 0.375, 0.375]
    loss = reinforce_loss(logp, rewards, baseline)
    loss.backward()

    p = np.exp([0.5, -0.25, 1.0]) / np.exp([0.5, -0.25, 1.0]).sum()
    adv = np.array([0.5, -0.5, 0.125, -0.125])
    logp_np = np.log(p)[[0, 2, 1, 1]]
    expected_loss = -(adv * logp_np).mean()
    expected_grad = -sum(a * (np.eye(3)[k] - p) for a, k in zip(adv, [0, 2, 1, 1], strict=True)) / 4
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(theta.grad.numpy(), expected_grad, rtol=1e-5, atol=1e-7)


def test_masked_samples_leave_the_reinforce_gradient_by_hand():
    """`keep` drops samples 2 and 4 (truncated): their advantage is 0, the mean is still over all 4 samples."""
    theta = torch.tensor([0.5, -0.25, 1.0], requires_grad=True)
    actions = torch.tensor([0, 2, 1, 1])
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25])
    baseline = compute_baseline(rewards.view(2, 2), "mean").reshape(-1)
    keep = torch.tensor([True, False, True, False])
    loss = reinforce_loss(torch.log_softmax(theta, dim=0)[actions], rewards, baseline, keep)
    loss.backward()

    p = np.exp([0.5, -0.25, 1.0]) / np.exp([0.5, -0.25, 1.0]).sum()
    kept = [(0.5, 0), (0.125, 1)]  # (advantage, action) of the kept samples
    expected_loss = -sum(a * np.log(p[k]) for a, k in kept) / 4
    expected_grad = -sum(a * (np.eye(3)[k] - p) for a, k in kept) / 4
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(theta.grad.numpy(), expected_grad, rtol=1e-5, atol=1e-7)


# Toy policy for the normalisations: softmax(theta) over 3 tokens at every position; sample 1 (advantage +0.5) is
# tokens (0, 2, 2) then padding, sample 2 (advantage -0.5) is token (1) alone: lengths 3 and 1, max_tokens 4.
TOY_TOKENS = [[0, 2, 2], [1]]
TOY_ADVANTAGES = [0.5, -0.5]


@pytest.mark.parametrize(
    "loss_type, divisors",
    [
        ("sequence_sum", [1, 1]),  # each sample's summed log p
        ("grpo", [3, 1]),  # its own length
        ("dapo", [2, 2]),  # the mean length of the batch: (3 + 1) / 2 tokens
        ("dr_grpo", [4, 4]),  # max_tokens, a constant
    ],
)
def test_each_loss_type_by_hand(loss_type, divisors):
    """L = -1/N sum_i A_i (sum_t log p(y_it)) / d_i; dL/dtheta = -1/N sum_i A_i / d_i sum_t (onehot(y_it) - p)."""
    theta = torch.tensor([0.5, -0.25, 1.0], requires_grad=True)
    tokens = torch.tensor([[0, 2, 2], [1, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    token_logp = torch.log_softmax(theta, dim=0)[tokens] * mask
    logp = normalised_logprobs(token_logp, mask, loss_type, max_tokens=4)
    rewards = torch.tensor(TOY_ADVANTAGES)
    loss = reinforce_loss(logp, rewards, torch.zeros(2))
    loss.backward()

    p = np.exp([0.5, -0.25, 1.0]) / np.exp([0.5, -0.25, 1.0]).sum()
    expected_loss = (
        -sum(
            a * sum(np.log(p[k]) for k in seq) / d
            for a, seq, d in zip(TOY_ADVANTAGES, TOY_TOKENS, divisors, strict=True)
        )
        / 2
    )
    expected_grad = (
        -sum(
            a / d * sum(np.eye(3)[k] - p for k in seq)
            for a, seq, d in zip(TOY_ADVANTAGES, TOY_TOKENS, divisors, strict=True)
        )
        / 2
    )
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(theta.grad.numpy(), expected_grad, rtol=1e-5, atol=1e-7)


def test_dapo_divides_by_the_mean_length_over_every_ranks_samples():
    """Given the all-rank mean length (here 5 tokens), dapo divides by it, not by the local mean (2)."""
    token_logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    local = normalised_logprobs(token_logp, mask, "dapo", max_tokens=4)
    everywhere = normalised_logprobs(token_logp, mask, "dapo", max_tokens=4, mean_tokens=torch.tensor(5.0))
    assert local.tolist() == [-1.5, -1.0] and everywhere.tolist() == pytest.approx([-0.6, -0.4])


def test_loss_type_is_checked_with_the_allowed_values(tmp_path):
    from fashioncap.errors import ConfigError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: out\nloss_type: token_mean\n")
    with pytest.raises(
        ConfigError, match="loss_type must be one of sequence_sum, grpo, dapo, dr_grpo, not 'token_mean'"
    ):
        load_config(recipe)
    assert load_config(None, ["--output_dir", str(tmp_path)]).training.loss_type == "sequence_sum"
    recipe.write_text("output_dir: out\ncollapse_guard_steps: 0\n")
    with pytest.raises(ConfigError, match="collapse_guard_steps must be >= 1, not 0"):
        load_config(recipe)


def test_truncated_samples_and_tied_groups_by_hand():
    sep, pad = 3, 0
    seqs = torch.tensor([[5, 7, sep, pad], [5, 7, 7, sep], [5, 7, 7, 7], [5, sep, pad, pad]])
    assert truncated_samples(seqs, sep).tolist() == [False, False, True, False]
    assert not truncated_samples(torch.tensor([[sep, 7, sep]]), sep).item(), "only sampled tokens count"
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.5, 0.2, 0.2])
    assert tied_groups(rewards, 2).tolist() == [True, False, True]
    assert tied_groups(rewards, 3).tolist() == [False, False]


def test_baselines_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.2, 0.8]])
    np.testing.assert_allclose(compute_baseline(r, "mean"), [[0.5] * 3, [0.4] * 3], rtol=1e-6)
    np.testing.assert_allclose(compute_baseline(r, "loo"), [[0.25, 0.75, 0.5], [0.5, 0.5, 0.2]], rtol=1e-6)
    greedy = torch.tensor([0.3, 0.9])
    np.testing.assert_allclose(compute_baseline(r, "greedy", greedy), [[0.3] * 3, [0.9] * 3])
    with pytest.raises(ValueError):
        compute_baseline(r[:, :1], "loo")
    with pytest.raises(ValueError):
        compute_baseline(r, "greedy")


@pytest.mark.parametrize("kind", ["mean", "loo", "greedy"])
def test_equal_rewards_give_zero_loss_and_zero_gradient(kind):
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    rewards = torch.full((4,), 0.7)
    baseline = compute_baseline(rewards.view(2, 2), kind, torch.full((2,), 0.7)).reshape(-1)
    loss = reinforce_loss(logp, rewards, baseline)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logp.grad) == 0 and torch.isfinite(loss)


def test_group_scaling_by_hand():
    """With the mean baseline: advantages divided by each image's reward std (population std of its H rewards);
    equal rewards stay 0."""
    rewards = torch.tensor([1.0, 3.0, 0.5, 0.5])  # image 1: std 1; image 2: std 0
    baseline = compute_baseline(rewards.view(2, 2), "mean").reshape(-1)  # 2, 2, 0.5, 0.5
    scaled, scaled_baseline = scale_by_group_rms(rewards, baseline, group=2, eps=1e-4)
    advantages = scaled - scaled_baseline
    torch.testing.assert_close(advantages[:2], torch.tensor([-1.0, 1.0]) / (1 + 1e-4))
    assert advantages[2:].tolist() == [0.0, 0.0]


def test_group_scaling_of_tied_samples_against_a_greedy_baseline():
    """H tied samples whose greedy caption scored otherwise: the reward std is 0, the advantages are not; they
    keep magnitude 1 (dividing by the std + 1e-4 made them 10^4)."""
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    baseline = compute_baseline(rewards.view(2, 4), "greedy", torch.tensor([0.0, 0.0])).reshape(-1)
    scaled, scaled_baseline = scale_by_group_rms(rewards, baseline, group=4, eps=1e-4)
    advantages = scaled - scaled_baseline
    torch.testing.assert_close(advantages[:4], torch.ones(4) / (1 + 1e-4))
    torch.testing.assert_close(advantages[4:], torch.tensor([0.0, 2.0, 0.0, 0.0]) / (1 + 2e-4))


def test_token_kl_is_zero_on_equal_policies_and_k3_by_hand():
    logp = torch.tensor([[-1.0, -2.0]])
    assert token_kl(logp, logp).tolist() == [[0.0, 0.0]]
    reference = torch.tensor([[-1.5, -1.0]])  # d = ref - policy = -0.5, +1
    expected = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1 - 1]
    torch.testing.assert_close(token_kl(logp, reference), torch.tensor([expected]))


def test_k3_as_a_loss_has_the_gradient_of_kl_reference_to_policy():
    """What token_kl's docstring says: over samples drawn from the policy (held fixed), the expected gradient of
    k3 is that of KL(reference || policy), not of KL(policy || reference)."""
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5], requires_grad=True)
    reference = torch.log_softmax(torch.tensor([1.0, 0.0, -0.5, 0.2]), dim=0)
    policy = torch.log_softmax(logits, dim=0)
    expected_k3 = (policy.exp().detach() * token_kl(policy, reference)).sum()  # exact expectation over tokens
    (k3_grad,) = torch.autograd.grad(expected_k3, logits)
    forward = (reference.exp() * (reference - torch.log_softmax(logits, dim=0))).sum()  # KL(ref || policy)
    (forward_grad,) = torch.autograd.grad(forward, logits)
    torch.testing.assert_close(k3_grad, forward_grad)
    policy = torch.log_softmax(logits, dim=0)
    reverse = (policy.exp() * (policy - reference)).sum()  # KL(policy || ref)
    (reverse_grad,) = torch.autograd.grad(reverse, logits)
    assert not torch.allclose(k3_grad, reverse_grad, atol=1e-3)


def test_completion_mask_and_sequence_logprobs_by_hand():
    sep, pad = 3, 0
    seqs = torch.tensor([[5, 7, 8, sep, pad, pad], [5, 9, sep, 7, 7, 7], [5, 7, 7, 7, 7, 7]])
    mask = completion_mask(seqs, sep)
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1] * 6]
    bart = torch.tensor([[sep, 0, 7, sep, pad], [sep, sep, pad, pad, pad]])  # BART starts from its end token
    assert completion_mask(bart, sep).tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]
    logits = torch.randn(3, 6, 10)
    logp = sequence_logprobs(logits, seqs, mask)
    lsm = torch.log_softmax(logits, dim=-1)
    expected = [
        lsm[0, 0, 7] + lsm[0, 1, 8] + lsm[0, 2, sep],
        lsm[1, 0, 9] + lsm[1, 1, sep],
        sum(lsm[2, t, 7] for t in range(5)),
    ]
    np.testing.assert_allclose(logp.numpy(), torch.stack(expected).numpy(), rtol=1e-5)


# --- the trainer on a tiny BLIP ---------------------------------------------------------------------------------


def _dataset(n=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    return datasets.Dataset.from_dict(
        {
            "image_id": list(range(n)),
            "image": [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in rows],
            "caption": rows,
            "attributes": [c.split()[1:3] for c in rows],
            "category": [1 + i % len(CAPTIONS) for i in range(n)],
        }
    ).cast_column("image", datasets.Image())


def _trainer(tmp_path, preset, rl_settings, model=None, processor=None):
    if model is None:
        model, processor = build_tiny({w for c in CAPTIONS for w in c.split()})
        model = apply_lora(
            model, lora_target_regex(preset, model.config.vision_config.num_hidden_layers, 2), r=4
        )
    args = FashionCapTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], remove_unused_columns=False,
        use_cpu=True, save_strategy="no", max_steps=1, num_beams=2, max_new_tokens=6, min_new_tokens=1,
        **rl_settings,
    )  # fmt: skip
    return build_trainer(model, processor, args, _dataset(), category_wordmap=WORDMAP)


def _grads_after_one_loss(trainer):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch))
    loss.backward()
    return {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("preset", ["decoder", "decoder+vision"])
def test_trials_train_exactly_their_lora_targets(preset):
    model, _ = build_tiny({"a"})
    model = apply_lora(model, lora_target_regex(preset, model.config.vision_config.num_hidden_layers, 2), r=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    vision = [n for n in trainable if "vision_model" in n]
    if preset == "decoder":
        assert vision == []  # trials 1/2 leave the vision encoder untouched
    else:
        layers = {int(re.search(r"layers\.(\d+)\.", n).group(1)) for n in vision}
        assert layers == {2, 3}  # the last 2 of 4 layers, counted from the model's own depth
        kinds = {re.search(r"(qkv|projection|fc1|fc2)", n).group(1) for n in vision}
        assert kinds == {"qkv", "projection", "fc1", "fc2"}
    decoder_modules = {
        n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable if "text_decoder" in n
    }
    assert decoder_modules and all(re.fullmatch(DECODER_TARGETS, m) for m in decoder_modules)
    assert (
        len(decoder_modules) == 2 * 10
    )  # 2 layers x (self q/k/v/out + cross q/k/v/out + intermediate + output)


@pytest.mark.parametrize("preset", [None, "decoder", "decoder+vision"], ids=["full", "decoder", "vision"])
@pytest.mark.parametrize("rl", [False, True], ids=["mle", "rl"])
def test_every_trainable_parameter_gets_a_gradient_so_ddp_needs_no_unused_parameter_search(
    tmp_path, preset, rl
):
    """Why `load_config` sets ddp_find_unused_parameters false: the search finds nothing and warns so."""
    model, processor = build_tiny({w for c in CAPTIONS for w in c.split()})
    if preset:
        targets = lora_target_regex(preset, model.config.vision_config.num_hidden_layers, 2)
        model = apply_lora(model, targets, r=4, modules_to_save=["embeddings.word_embeddings"])
    settings = {"reward_funcs": ["als", "sls"], "rl_weight": 0.25, "num_samples": 2} if rl else {}
    grads = _grads_after_one_loss(_trainer(tmp_path, preset, settings, model, processor))
    assert grads and [name for name, grad in grads.items() if grad is None] == []
    assert load_config(None, ["--output_dir", str(tmp_path)]).training.ddp_find_unused_parameters is False


def test_lora_target_matching_nothing_is_an_error():
    model, _ = build_tiny({"a"})
    with pytest.raises(ValueError, match="matches no module"):
        apply_lora(model, r"text_decoder\.nothing_here")
    with pytest.raises(ValueError, match="vision_lora_layers"):
        lora_target_regex("decoder+vision", 4, 6)


def test_rl_gradient_reaches_the_vision_lora_in_trial4(tmp_path):
    torch.manual_seed(0)
    rl_only = dict(
        reward_funcs=["als", "sls"], rl_weight=1.0, mle_weight=0.0, num_samples=4, max_sample_tokens=6
    )
    grads = _grads_after_one_loss(_trainer(tmp_path, "decoder+vision", rl_only))
    vision = {n: g for n, g in grads.items() if "vision_model" in n and "lora_A" in n}
    assert vision, "trial 4 should have vision LoRA"
    # lora_B starts at zero, so lora_A's gradient is zero on the first step; lora_B's is not
    vision_b = [g for n, g in grads.items() if "vision_model" in n and "lora_B" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in vision_b)


def test_rl_term_logs_each_reward(tmp_path):
    torch.manual_seed(0)
    args = dict(reward_funcs=["als", "sls"], rl_weight=1.0, num_samples=2, max_sample_tokens=6)
    trainer = _trainer(tmp_path, "decoder", args)
    _grads_after_one_loss(trainer)
    trainer.log({"loss": 1.0})
    logged = trainer.state.log_history[-1]
    assert {"loss/mle", "loss/rl", "reward/als", "reward/sls", "reward/total"} <= set(logged)
    assert logged["reward/total"] == pytest.approx(logged["reward/als"] + logged["reward/sls"], abs=1e-5)
    assert not trainer._metrics  # reset after each log


def test_truncated_samples_are_logged_and_masked_out_of_the_rl_term(tmp_path):
    """A decoder that never says [SEP] truncates every sample: the share is logged as 1, and with
    mask_truncated_completions the RL term drops them all (loss 0, no gradient); without, it does not."""
    rl_only = dict(reward_funcs=["als", "sls"], rl_weight=1.0, mle_weight=0.0, num_samples=2,
                   max_sample_tokens=3)  # fmt: skip
    logged, gradient = {}, {}
    for mask in (False, True):
        torch.manual_seed(0)
        trainer = _trainer(tmp_path, "decoder", {**rl_only, "mask_truncated_completions": mask})
        blip = trainer.model.get_base_model()
        blip.text_decoder.cls.predictions.bias.data[blip.config.text_config.sep_token_id] = -1e4
        grads = _grads_after_one_loss(trainer)
        gradient[mask] = sum(float(g.abs().sum()) for g in grads.values() if g is not None)
        trainer.log({"loss": 1.0})
        logged[mask] = trainer.state.log_history[-1]
    assert logged[False]["completions/truncated_share"] == logged[True]["completions/truncated_share"] == 1.0
    assert logged[True]["loss/rl"] == 0.0 and gradient[True] == 0.0
    assert logged[False]["loss/rl"] != 0.0 and gradient[False] > 0.0
    unmasked, masked = (t["images"] for t in read_completions(tmp_path))  # one table per run, in order
    samples = [[s for image in table for s in image["samples"]] for table in (unmasked, masked)]
    assert any(s["advantage"] != 0.0 for s in samples[0]) and [s["caption"] for s in samples[0]] == [
        s["caption"] for s in samples[1]
    ]
    assert all(s["advantage"] == 0.0 for s in samples[1]), "the table shows the advantage the RL term used"
    assert 0.0 <= logged[False]["rl/tied_groups"] <= 1.0


def test_an_rl_run_with_rl_start_is_its_mle_twin_until_rl_starts(tmp_path):
    """The study's fair twin: same seed, same data order, same weights until `rl_start`; then they part.
    rl_start 0.5 of 4 steps: RL starts with step 3, so after step 2 the twins' trainable weights (and the
    optimizer's moments) are compared bit for bit, and again after step 3."""
    from transformers import TrainerCallback

    class TrainedWeights(TrainerCallback):
        """A copy of the trainable weights and AdamW's moments after each optimizer step."""

        def __init__(self):
            self.after_step: dict[int, list[torch.Tensor]] = {}

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            weights = [p.detach().clone() for p in model.parameters() if p.requires_grad]
            moments = [t.clone() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
            self.after_step[state.global_step] = weights + moments

    histories, snapshots = [], []
    for rl_weight in (0.0, 1.0):
        torch.manual_seed(0)
        settings = dict(reward_funcs=["als", "sls"], rl_weight=rl_weight, num_samples=2, max_sample_tokens=6,
                        rl_start=0.5, seed=3)  # fmt: skip
        trainer = _trainer(tmp_path / str(rl_weight), "decoder", settings)
        trainer.args.max_steps, trainer.args.logging_steps = 4, 1
        trainer.add_callback(weights := TrainedWeights())
        trainer.train()
        histories.append([h["loss/mle"] for h in trainer.state.log_history if "loss/mle" in h])
        snapshots.append(weights.after_step)
    mle, rl = histories
    assert mle[:3] == rl[:3], "steps 1-2 and the step RL starts at see the same weights and batches"
    assert mle[3] != rl[3], "after one RL update the weights differ"
    at_rl_start = zip(snapshots[0][2], snapshots[1][2], strict=True)
    assert all(torch.equal(a, b) for a, b in at_rl_start), "to the bit when RL starts"
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0][3], snapshots[1][3], strict=True))


def test_collator_starts_with_dec_and_masks_padding():
    _, processor = build_tiny({w for c in CAPTIONS for w in c.split()})
    batch = CaptionCollator(processor, max_length=6)([{"image": Image.new("RGB", (64, 64)), "image_id": i,
                                                       "caption": c, "attributes": [], "category": 1}
                                                      for i, c in enumerate(CAPTIONS[:2])])  # fmt: skip
    dec = processor.tokenizer.convert_tokens_to_ids("[DEC]")
    assert (batch["input_ids"][:, 0] == dec).all()
    assert batch["input_ids"].shape[1] == 6  # the long caption is truncated to max_length
    assert (batch["labels"][:, 0] == IGNORE_INDEX).all()
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == IGNORE_INDEX).all() and pad.any()
    eval_batch = CaptionCollator(processor)([{"image": Image.new("RGB", (64, 64)), "image_id": 3,
                                              "references": ["a red dress"]}])  # fmt: skip
    assert set(eval_batch) == {"pixel_values", "image_ids"}  # nothing to copy a reference from


def test_augmentation_differs_per_worker_rank_and_epoch():
    """Issue 26: each dataloader worker copied one random.Random(seed) that restarted every epoch, so worker 1
    replayed worker 0's flips and shifts, every epoch the first's, and every rank the same. Now each worker,
    epoch and rank draws its own, and a run repeats exactly."""
    _, processor = build_tiny({"a"})
    image = Image.new("RGB", (64, 64), "white")
    image.paste((0, 0, 0), (8, 8, 30, 20))  # off-centre: a flip or a shift moves it
    rows = [{"image": image, "image_id": i, "caption": "a"} for i in range(8)]

    def two_epochs(workers: int, rank: int = 0) -> list[list[torch.Tensor]]:
        torch.manual_seed(0)  # what the trainer's seed does before the loader draws its workers' seeds
        collator = CaptionCollator(processor, augment=True, seed=3, rank=rank)
        loader = torch.utils.data.DataLoader(rows, batch_size=2, num_workers=workers, collate_fn=collator)
        return [[batch["pixel_values"] for batch in loader] for _ in range(2)]

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    first, second = two_epochs(workers=2)  # batches 0 and 2 from worker 0, 1 and 3 from worker 1
    assert not same(first[0:1], first[1:2]) and not same(first[2:3], first[3:4]), "the workers differ"
    assert not same(first, second), "the epochs differ"
    assert same(first + second, sum(two_epochs(workers=2), [])), "and the run repeats"
    rank0, rank1 = two_epochs(workers=0), two_epochs(workers=0, rank=1)
    assert not same(rank0[0], rank0[1]) and not same(rank0[0], rank1[0]), "epochs and ranks differ"


def test_predictions_do_not_depend_on_the_references(tmp_path):
    """Shuffling (here: replacing) the eval set's reference captions leaves the generated captions unchanged."""
    from fashioncap.data import group_references

    trainer = _trainer(tmp_path, "decoder", dict())
    grouped = group_references(_dataset(6))
    shuffled = grouped.map(lambda row, i: {"references": [CAPTIONS[(i + 1) % 4], "zzz"]}, with_indices=True)
    first = trainer.predict(grouped)
    second = trainer.predict(shuffled)
    assert first.predictions.shape[0] == 6
    np.testing.assert_array_equal(first.predictions, second.predictions)
    np.testing.assert_array_equal(first.label_ids, np.arange(6))


def test_nonfinite_loss_skips_the_step_then_stops(tmp_path):
    trainer = _trainer(tmp_path, "decoder", dict())
    trainer.model.train()
    nan = torch.tensor(float("nan"))
    zero = trainer._skip_if_nonfinite(trainer.model, nan)
    assert zero.item() == 0.0 and zero.requires_grad
    trainer._nonfinite_in_a_row = trainer.max_nonfinite_steps - 1
    with pytest.raises(FloatingPointError, match="non-finite losses in a row"):
        trainer._skip_if_nonfinite(trainer.model, nan)


def test_rl_start_trains_mle_alone_first(tmp_path):
    torch.manual_seed(0)
    args = dict(reward_funcs=["als", "sls"], rl_weight=1.0, num_samples=2, max_sample_tokens=6,
                           rl_start=0.5)  # fmt: skip
    trainer = _trainer(tmp_path, "decoder", args)
    trainer.args.max_steps, trainer.args.logging_steps = 4, 1
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert [("reward/total" in h) for h in history] == [False, False, True, True]
    assert all("loss/mle" in h for h in history)
    with pytest.raises(ValueError, match="rl_start"):
        FashionCapTrainingArguments(
            output_dir=str(tmp_path), reward_funcs=["als"], rl_weight=1.0, rl_start=1.0
        )


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
@pytest.mark.parametrize("gathered", [True, False], ids=["gathered", "synced"])
def test_rollout_under_zero3_gathers_the_decoder_once_or_decodes_in_step(
    tmp_path, monkeypatch, gathered, baseline
):
    """Under ZeRO-3 each decode of the step (the samples, and the greedy captions of the baseline or, without it,
    of the collapse guard) runs with the decoder's forward hooks (DeepSpeed's per-module gathering) lifted (the
    samples and the greedy baseline within one gather), and the hooks are back for the scoring pass: ranks need
    not decode in step and CUDA graphs may be captured. With `zero3_gathered_decoding: false` the hooks gather at
    every token: every decode runs synced (all ranks take every step), never as a graph. The guard reuses the
    greedy baseline's captions: two decodes either way."""
    rl = dict(reward_funcs=["sls"], rl_weight=1.0, num_samples=2, max_sample_tokens=6, baseline=baseline)
    trainer = _trainer(tmp_path, "decoder", {**rl, "zero3_gathered_decoding": gathered})
    monkeypatch.setattr(trainer, "_is_zero3", lambda: True)
    head = trainer._captioner(trainer.model).text_decoder.cls
    hook_calls = []
    head.register_forward_pre_hook(lambda module, args: hook_calls.append(args[0].shape))
    calls = []
    original = trainer_module.decode

    def recording(*args, **kwargs):
        calls.append({**kwargs, "hooks": len(head._forward_pre_hooks), "hook_calls": len(hook_calls)})
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "decode", recording)
    _grads_after_one_loss(trainer)
    assert len(calls) == 2  # samples, greedy
    assert all(kwargs["synced_gpus"] is not gathered and kwargs["cuda_graphs"] is None for kwargs in calls)
    if gathered:  # `decode` may capture graphs (on CUDA): None
        assert [kwargs["hooks"] for kwargs in calls] == [0, 0], "the decoder's hooks were on while decoding"
        if baseline == "greedy":
            assert calls[1]["hook_calls"] == calls[0]["hook_calls"], "the hooks came back between the decodes"
    else:  # `decode` never captures a graph under synced_gpus
        assert [kwargs["hooks"] for kwargs in calls] == [1, 1]
    # the scoring pass after the samples' decode ran the hook: it came back
    assert len(head._forward_pre_hooks) == 1 and len(hook_calls) > calls[0]["hook_calls"], (
        "hooks not restored"
    )


def test_samples_are_scored_by_the_policy_that_drew_them(tmp_path, monkeypatch):
    """On-policy: with LoRA dropout on, the sampled captions' log-probabilities carry no dropout (the same on every
    call, equal to the model in eval mode) and use the sampling temperature."""
    model, processor = build_tiny({w for c in CAPTIONS for w in c.split()})
    model = apply_lora(model, lora_target_regex("decoder", 4, 2), r=4, dropout=0.5)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # make the adapter (and its dropout) matter
    rl = dict(reward_funcs=["sls"], rl_weight=1.0, mle_weight=0.0, num_samples=2, sample_temperature=0.7)
    trainer = _trainer(tmp_path, "decoder", rl, model=model, processor=processor)
    tok = processor.tokenizer
    samples = torch.tensor([tok.encode("[DEC] a red dress [SEP]", add_special_tokens=False)] * 8)
    captured = {}
    original = token_logprobs

    def recording(logits, sequences, mask, temperature=1.0):
        captured.setdefault("calls", []).append((logits.detach().clone(), temperature))
        return original(logits, sequences, mask, temperature)

    def fixed_rollout(blip, image_embeds, columns, memory=None):
        total = torch.tensor([1.0, 0.0] * image_embeds.size(0))
        return samples[: 2 * image_embeds.size(0)], {"sls": total}, total, torch.full_like(total, 0.5)

    monkeypatch.setattr("fashioncap.trainer.token_logprobs", recording)
    monkeypatch.setattr(trainer, "rollout", fixed_rollout)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    trainer.model.train()
    losses = [trainer.compute_loss(trainer.model, dict(batch)).item() for _ in range(2)]
    (first, temperature), (second, _) = captured["calls"]
    assert temperature == 0.7 and losses[0] == losses[1]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    blip = trainer._captioner(trainer.model)
    with torch.no_grad():
        blip.eval()
        embeds = blip.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        plain = blip.text_decoder(
            input_ids=samples, attention_mask=torch.ones_like(samples),
            encoder_hidden_states=embeds.repeat_interleave(2, 0),
        ).logits  # fmt: skip
    torch.testing.assert_close(first, plain, rtol=1e-4, atol=1e-5)


def test_kl_to_the_base_model_is_zero_for_an_untrained_adapter_and_positive_after(tmp_path):
    """kl_weight: the KL penalty to the base (adapter disabled) is logged as `kl`; it is 0 while LoRA B is zero
    (policy == base) and positive once the adapter moves the policy."""
    torch.manual_seed(0)
    rl = dict(reward_funcs=["sls"], rl_weight=1.0, num_samples=2, max_sample_tokens=6, kl_weight=0.5)
    trainer = _trainer(tmp_path, "decoder", rl)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(batch))
    trainer.log({"loss": 0.0})
    assert trainer.state.log_history[-1]["kl"] == 0.0
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    trainer.compute_loss(trainer.model, dict(batch))
    trainer.log({"loss": 0.0})
    assert trainer.state.log_history[-1]["kl"] > 0


def test_the_steps_one_projection_of_the_image_kv_draws_the_rollouts_own_samples(tmp_path):
    """The step projects each image's cross-attention K/V once (training mode, dropout off, with gradient) to
    draw the samples (detached) and to score them: the samples are token for token those the rollout draws
    from the image embeddings itself in eval mode, with LoRA dropout on in the model."""
    rl = dict(reward_funcs=["sls"], rl_weight=1.0, num_samples=3, max_sample_tokens=8)
    trainer = _trainer(tmp_path, "decoder+vision", rl)
    blip = trainer._captioner(trainer.model)
    with torch.no_grad():
        for name, param in blip.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # make the adapter, and its dropout, matter
    inputs = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    columns = {k: inputs[k] for k in ("caption", "attributes", "category")} | {
        "image_id": inputs["image_ids"]
    }
    trainer.model.train()
    image_embeds = blip.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
    with trainer_module.dropout_disabled(blip.text_decoder):
        memory = trainer_module.image_memory(blip, image_embeds)
    assert memory.keys[0].requires_grad
    torch.manual_seed(0)
    own = trainer.rollout(blip, image_embeds.detach(), columns)[0]
    torch.manual_seed(0)
    shared = trainer.rollout(blip, image_embeds.detach(), columns, memory.detach())[0]
    assert torch.equal(own, shared) and own.size(1) > 2


# --- the collapse guard: a decoder forced never to say [SEP] runs every caption to the length limit ----------------


def _collapsing_trainer(tmp_path, guard, **settings):
    torch.manual_seed(0)
    rl = dict(
        reward_funcs=["als", "sls"], rl_weight=1.0, num_samples=2, max_sample_tokens=4, collapse_guard=guard
    )
    trainer = _trainer(tmp_path, "decoder", {**rl, **settings})
    blip = trainer.model.get_base_model()
    blip.text_decoder.cls.predictions.bias.data[blip.config.text_config.sep_token_id] = -1e4
    return trainer


def test_the_guard_warns_once_logs_health_and_the_completions_table(tmp_path, caplog):
    trainer = _collapsing_trainer(tmp_path, "warn", log_completions_steps=50, collapse_guard_steps=1)
    trainer._completions_step, trainer.state.global_step = 0, 1  # a table is not due at step 1 ...
    with caplog.at_level("WARNING", logger="fashioncap.collapse_guard"):
        _grads_after_one_loss(trainer)
        _grads_after_one_loss(trainer)
    warnings = [r.getMessage() for r in caplog.records if "collapsing" in r.getMessage()]
    assert len(warnings) == 1, "one warning line, not one per step"
    assert warnings[0].startswith(
        "the captions are collapsing at step 1: of the greedy captions, 100% run to "
    )
    assert "turn rl_weight down (now 1) or use loss_type: grpo" in warnings[0], "the summed term: both keys"
    tables = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert [t["step"] for t in tables] == [1], "... but the step the guard fired at shows its samples"
    trainer.log({"loss": 1.0})
    logged = trainer.state.log_history[-1]
    assert logged["health/greedy_length_limit_share"] == logged["health/sampled_length_limit_share"] == 1.0
    for name in ("repeated_trigram_share", "distinct_1", "distinct_2", "mean_length"):
        assert f"health/sampled_{name}" in logged and f"health/greedy_{name}" in logged
    assert logged["health/greedy_mean_length"] > 0


def test_the_guard_decodes_greedy_captions_every_collapse_guard_steps_and_logs_the_samples_every_step(
    tmp_path, monkeypatch
):
    trainer = _collapsing_trainer(tmp_path, "warn", collapse_guard_steps=2)
    decodes, rollout_decode = [], trainer_module.decode

    def counted(*args, **kwargs):
        decodes.append(kwargs.get("do_sample", False))
        return rollout_decode(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "decode", counted)
    for step in (1, 2):
        trainer.state.global_step = step
        _grads_after_one_loss(trainer)
        trainer.log({"loss": 1.0})
    off_step, check_step = trainer.state.log_history[-2], trainer.state.log_history[-1]
    assert decodes == [True, True, False], "samples at both steps, the greedy captions at step 2 only"
    assert "health/sampled_length_limit_share" in off_step and "health/greedy_mean_length" not in off_step
    assert check_step["health/greedy_length_limit_share"] == 1.0


def test_the_guards_advice_names_the_dose_and_grpo_only_for_the_summed_term():
    from fashioncap.collapse_guard import CollapseGuard

    assert (
        CollapseGuard("warn", 2.0, "sequence_sum").advice
        == "turn rl_weight down (now 2) or use loss_type: grpo"
    )
    for per_token in ("grpo", "dapo", "dr_grpo"):
        assert CollapseGuard("warn", 0.5, per_token).advice == "turn rl_weight down (now 0.5)"


def test_the_guard_stops_and_saves_in_stop_mode(tmp_path):
    from fashioncap.collapse_guard import CollapseError
    from fashioncap.train import fit

    trainer = _collapsing_trainer(tmp_path, "stop")
    trainer.args.max_steps = 3
    with pytest.raises(CollapseError, match=r"collapsed at step 0 \(100% run to the length limit\): stopped and "
                                            r"saved a checkpoint in .*turn rl_weight down"):  # fmt: skip
        fit(trainer, trainer.args)
    assert trainer.state.global_step == 1, "stopped at the end of the first step"
    assert (tmp_path / "checkpoint-1").is_dir()


def test_the_guard_off_logs_no_health(tmp_path, caplog):
    trainer = _collapsing_trainer(tmp_path, "off")
    with caplog.at_level("WARNING", logger="fashioncap.collapse_guard"):
        _grads_after_one_loss(trainer)
    trainer.log({"loss": 1.0})
    assert not any(k.startswith("health/") for k in trainer.state.log_history[-1])
    assert not [r for r in caplog.records if "collapsing" in r.getMessage()]
