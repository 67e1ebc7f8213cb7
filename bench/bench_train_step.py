"""Train-step time, side by side on one batch: MLE only, MLE+REINFORCE with H=1 and H=4, and the seed's step.

Ours is `FashionCapTrainer.compute_loss` + backward + optimizer step (vision once, one batched sampling call, one
decoder pass over references and samples). The seed's step is the loop on its "Modeling 2" slide, reproduced as
written: MLE forward/backward, a greedy `model.generate(pixel_values, max_length=50)` (a second vision pass), ALS
and SLS of those captions, then a second backward of -mean((r - mean r) * log p(reference tokens)).

Variants run round-robin, so a neighbour's load on the shared cores hits each alike; the figure is the median
after warm-up. Random weights: samples rarely emit [SEP], so sampling runs to `max_tokens`, its worst case.
The reward cache is cleared before each step: the same batch repeats here, new captions come in training.

    python -m bench.bench_train_step [--large]       # JSON on stdout
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import torch

from bench.facad_records import facad_records

VARIANTS = ("mle", "rl_h1", "rl_h4", "rl_h4_guard", "seed")
# Salesforce/blip-image-captioning-large's shape (random weights: no download here).
LARGE_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=384, patch_size=16, layer_norm_eps=1e-5, initializer_range=0.02)  # fmt: skip
LARGE_TEXT = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, encoder_hidden_size=1024, max_position_embeddings=512)  # fmt: skip
# florence-community/Florence-2-base's shape (its config.json, written out: no download here). DaViT: 4 stages,
# strides 4/2/2/2 (768 px -> a 24x24 grid: 576 image tokens + 1 pooled); BART-base: d_model 768, 6 + 6 layers.
FLORENCE2_BASE_VISION = dict(depths=[1, 1, 9, 1], embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32],
                             num_groups=[4, 8, 16, 32], window_size=12, projection_dim=768, patch_size=[7, 3, 3, 3],
                             patch_stride=[4, 2, 2, 2], patch_padding=[3, 1, 1, 1],
                             patch_prenorm=[False, True, True, True], drop_path_rate=0.1)  # fmt: skip
FLORENCE2_BASE_TEXT = dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                           decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)  # fmt: skip
FLORENCE2_BASE_VOCAB, FLORENCE2_BASE_POSITIONS = 51289, 1024
SHAPES = {  # image size, LoRA'd vision layers (trial 4: the last 6 of BLIP-large's 24 layers, of Florence-2's 12
    # DaViT blocks; the demo's 2 of the tiny model)
    "tiny": {"image_size": 64, "vision_lora_layers": 2},
    "large": {"image_size": 384, "vision_lora_layers": 6},
    "florence2-base": {"image_size": 768, "vision_lora_layers": 6},
}
LARGE_SHAPE = {"blip": "large", "florence2": "florence2-base"}  # `make bench-large`'s shape of each family


def facad_rows(n: int, image_size: int, seed: int = 0) -> tuple[list[dict], dict[int, str], list[str]]:
    """n training rows of FACAD sample captions (15-30 words) on noise images; the category is the title's last word.

    Returns the rows, the category wordmap, and every word of the sample (the whole-word vocabulary).
    """
    from PIL import Image

    records = facad_records()
    words = sorted({w for r in records for w in (r["description"] + " " + r["title"]).split()})
    chosen = [r for r in records if 15 <= len(r["description"].split()) <= 30][:n]
    names = sorted({r["title"].split()[-1] for r in chosen})
    category = {name: i for i, name in enumerate(names, start=1)}
    rng = random.Random(seed)
    rows = [
        {
            "image": Image.frombytes(
                "RGB", (image_size, image_size), rng.randbytes(3 * image_size * image_size)
            ),
            "image_id": i,
            "caption": r["description"],
            "attributes": r["title"].split()[:-1],
            "category": category[r["title"].split()[-1]],
        }
        for i, r in enumerate(chosen)
    ]
    return rows, {i: name for name, i in category.items()}, words


def build_large_blip(words: list[str]):
    """BLIP-large's shape with random weights and a whole-word vocabulary padded to its 30524 entries."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    from fashioncap.models.blip import SPECIAL_TOKENS, configure_generation_ids

    tokens = [*SPECIAL_TOKENS, *sorted(set(words) - set(SPECIAL_TOKENS))]
    tokens += [f"[unused{i}]" for i in range(LARGE_TEXT["vocab_size"] - len(tokens))]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = BertTokenizer(
        vocab=vocab, bos_token="[DEC]", additional_special_tokens=["[ENC]"], model_max_length=512
    )
    ids = {"pad_token_id": vocab["[PAD]"], "bos_token_id": vocab["[DEC]"], "eos_token_id": vocab["[SEP]"],
           "sep_token_id": vocab["[SEP]"]}  # fmt: skip
    config = BlipConfig(vision_config=LARGE_VISION, text_config={**LARGE_TEXT, **ids})
    model = BlipForConditionalGeneration(config)
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": 384, "width": 384}), tokenizer=tokenizer
    )
    configure_generation_ids(model, tokenizer)
    return model, processor


def build_base_florence2(words: list[str]):
    """Florence-2-base's shape with random weights and a whole-word vocabulary padded to its 51289 entries."""
    from fashioncap.models.florence2 import build_random

    return build_random(words, FLORENCE2_BASE_VISION, FLORENCE2_BASE_TEXT, image_size=768,
                        max_positions=FLORENCE2_BASE_POSITIONS, vocab_size=FLORENCE2_BASE_VOCAB)  # fmt: skip


def build_model(shape: str, words: list[str], device: str):
    """The trial-4 LoRA model (r16 on the decoder and the last vision layers), initialised on `device` directly."""
    from fashioncap.models import build_tiny_model, lora_targets
    from fashioncap.models.lora import apply_lora

    builders = {"large": build_large_blip, "florence2-base": build_base_florence2, "tiny": build_tiny_model}
    with torch.device(device):
        model, processor = builders[shape](words)
        regex = lora_targets(model, "decoder+vision", SHAPES[shape]["vision_lora_layers"])
        model = apply_lora(model, regex, r=16, alpha=32, dropout=0.05)
    return model, processor


def make_trainer(model, processor, wordmap, reward_funcs, output_dir: str, device: str, bf16: bool):
    """A FashionCapTrainer whose compute_loss the steps call; its reward settings are swapped per variant.

    Returns (trainer, how). Where this transformers cannot construct the Trainer (the GPU machine's is older), the
    real class is instantiated without its Trainer __init__ and given only what compute_loss reads: the same
    compute_loss code runs either way, and `how` says which path was taken.
    """
    from types import SimpleNamespace

    from fashioncap.configs import SECTIONS, FashionCapTrainingArguments
    from fashioncap.rewards import get_reward_funcs
    from fashioncap.trainer import FashionCapTrainer, build_trainer

    rl = dict(reward_funcs=list(reward_funcs), rl_weight=1.0, num_samples=4)
    try:
        args = FashionCapTrainingArguments(
            output_dir=output_dir, use_cpu=device == "cpu", bf16=bf16, report_to=[], remove_unused_columns=False,
            save_strategy="no", **rl,
        )  # fmt: skip
        return build_trainer(model, processor, args, category_wordmap=wordmap), "FashionCapTrainer"
    except Exception as err:  # noqa: BLE001 - any construction failure falls back; the reason is reported
        args = object.__new__(FashionCapTrainingArguments)  # the fields compute_loss reads, no __post_init__
        for f in dataclasses.fields(FashionCapTrainingArguments):
            if any(f.name in keys for keys in SECTIONS.values()):
                setattr(args, f.name, f.default_factory() if callable(f.default_factory) else f.default)
        args.__dict__.update(average_tokens_across_devices=True, **rl)
        trainer = FashionCapTrainer.__new__(FashionCapTrainer)
        trainer.__dict__.update(
            model=model, args=args, processing_class=processor, reward_funcs=get_reward_funcs(rl["reward_funcs"]),
            category_wordmap=wordmap, _metrics=defaultdict(list), _nonfinite_in_a_row=0,
            accelerator=SimpleNamespace(unwrap_model=lambda m: m, state=SimpleNamespace(deepspeed_plugin=None)),
        )  # fmt: skip
        return trainer, f"compute_loss on an uninitialised FashionCapTrainer ({type(err).__name__}: {err})"


def record_sample_lengths(trainer) -> list[torch.Tensor]:
    """Wrap the trainer's rollout to collect the mean sampled length per step (a tensor: no device sync)."""
    from fashioncap.decoding import text_decoder
    from fashioncap.rl import completion_mask

    rollout, lengths = trainer.rollout, []
    sep = text_decoder(trainer.model.get_base_model()).eos_token_id  # its family's end token

    def recording(*args, **kwargs):
        out = rollout(*args, **kwargs)
        lengths.append(completion_mask(out[0], sep)[:, 1:].sum(1).float().mean())
        return out

    trainer.rollout = recording
    return lengths


def ours_step(trainer, model, batch: dict, optimizer) -> None:
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def seed_step(trainer, model, batch: dict, optimizer) -> None:
    """The seed's loop body (shared/seed, "Modeling 2"), line for line, minus the image processor and scheduler."""
    outputs = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"], labels=batch["input_ids"])  # fmt: skip
    mle_loss = outputs.loss
    generated_ids = model.generate(pixel_values=batch["pixel_values"], max_length=50)
    generated_texts = trainer.processing_class.batch_decode(generated_ids, skip_special_tokens=True)
    rewards = trainer.score(generated_texts, {k: batch[k] for k in ("caption", "attributes", "category")})
    optimizer.zero_grad()
    mle_loss.backward(retain_graph=True)
    log_probs = torch.nn.functional.log_softmax(outputs.logits, dim=-1)
    gathered_log_probs = log_probs.gather(2, batch["input_ids"].unsqueeze(-1)).squeeze(-1)
    batch_size, seq_length = gathered_log_probs.size()
    # The slide weights by ALS alone (SLS is computed and unused); the first reward function is ALS.
    reward = next(iter(rewards.values())).to(log_probs.device).unsqueeze(1).expand(batch_size, seq_length)
    reinforce_loss = -torch.mean((reward - reward.mean()) * gathered_log_probs)
    reinforce_loss.backward()
    optimizer.step()


def synchronize(device: str) -> None:
    """Wait for queued CUDA work, so perf_counter brackets the step itself."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    shape: str = "tiny",
    batch_size: int = 16,
    warmup: int = 2,
    steps: int = 5,
    max_tokens: int = 50,
    device: str = "cpu",
    bf16: bool = False,
    gradient_checkpointing: bool = False,
    reward_funcs: tuple[str, ...] = ("als", "sls"),
    variants: tuple[str, ...] = VARIANTS,
    built: tuple | None = None,
) -> dict:
    """Median seconds per step of each variant, the ratios, and (on CUDA) peak memory per variant.

    `built` = (model, processor, rows, wordmap) reuses a model across calls (the GPU check's two checkpointing
    settings); otherwise one is built here.
    """
    from fashioncap.data.collator import CaptionCollator
    from fashioncap.rewards.attributes import _attribute_cache

    cuda = device.startswith("cuda")
    if built is None:
        rows, wordmap, words = facad_rows(batch_size, SHAPES[shape]["image_size"])
        model, processor = build_model(shape, words, device)
    else:
        model, processor, rows, wordmap = built
    batch = CaptionCollator(processor, max_length=50)(rows[:batch_size])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-5, weight_decay=0.05
    )
    settings = {
        "mle": dict(rl_weight=0.0),
        "rl_h1": dict(rl_weight=1.0, num_samples=1, max_sample_tokens=max_tokens),
        "rl_h4": dict(rl_weight=1.0, num_samples=4, max_sample_tokens=max_tokens),
        # a step at which the collapse guard decodes the greedy captions (every collapse_guard_steps RL steps)
        "rl_h4_guard": dict(
            rl_weight=1.0, num_samples=4, max_sample_tokens=max_tokens, collapse_guard="warn"
        ),
    }
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and cuda else contextlib.nullcontext()
    times: dict[str, list[float]] = {v: [] for v in variants}
    peak: dict[str, int] = dict.fromkeys(variants, 0)
    sample_lengths: dict[str, list[torch.Tensor]] = {v: [] for v in variants if v.startswith("rl")}
    with tempfile.TemporaryDirectory() as tmp:
        trainer, how = make_trainer(model, processor, wordmap, reward_funcs, tmp, device, bf16)
        lengths = record_sample_lengths(trainer)
        for round_ in range(warmup + steps):
            for variant in variants:
                for key, value in {"collapse_guard": "off", **settings.get(variant, {})}.items():
                    setattr(trainer.args, key, value)
                if hasattr(trainer, "collapse_guard"):
                    trainer.collapse_guard.mode = trainer.args.collapse_guard
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                _attribute_cache.clear()  # each training step tags new captions; this batch repeats
                synchronize(device)
                start = time.perf_counter()
                with autocast:
                    (seed_step if variant == "seed" else ours_step)(trainer, model, batch, optimizer)
                synchronize(device)
                elapsed = time.perf_counter() - start
                print(
                    f"[train_step] {shape} {variant} step {round_}: {elapsed:.3f} s",
                    file=sys.stderr,
                    flush=True,
                )
                if round_ >= warmup:
                    times[variant].append(elapsed)
                if cuda:
                    peak[variant] = max(peak[variant], torch.cuda.max_memory_allocated())
                if variant in sample_lengths:
                    sample_lengths[variant] += lengths
                lengths.clear()
                trainer._metrics.clear()  # the logged parts pile up without the Trainer's logging loop
    median = {v: statistics.median(t) for v, t in times.items()}
    result = {
        "shape": shape,
        "batch_size": batch_size,
        "device": device,
        "bf16": bf16,
        "gradient_checkpointing": gradient_checkpointing,
        "torch_threads": torch.get_num_threads(),
        "warmup_steps": warmup,
        "measured_steps": steps,
        "max_sample_tokens": max_tokens,
        "seed_greedy_max_length": 50,
        "reward_funcs": list(reward_funcs),
        "trainer": how,
        "reference_tokens": int(batch["attention_mask"].sum(1).float().mean().item()),
        **{f"{v}_s": round(m, 4) for v, m in median.items()},
        **{
            f"{v}_sample_tokens": round(torch.stack(n).mean().item(), 1)
            for v, n in sample_lengths.items()
            if n
        },
        **{f"{v}_all_s": [round(t, 4) for t in ts] for v, ts in times.items()},
    }
    ratios = {"rl_h4_over_mle": ("rl_h4", "mle"), "rl_h1_over_mle": ("rl_h1", "mle"),
              "guard_check_over_rl_h4": ("rl_h4_guard", "rl_h4"),
              "rl_h1_over_seed": ("rl_h1", "seed"), "seed_over_mle": ("seed", "mle")}  # fmt: skip
    result.update(
        {k: round(median[a] / median[b], 3) for k, (a, b) in ratios.items() if a in median and b in median}
    )
    if cuda:
        result.update({f"{v}_peak_gib": round(p / 2**30, 2) for v, p in peak.items()})
    return result


def run(large: bool = False, threads: int = 1, family: str = "blip") -> dict:
    """`make bench` (tiny BLIP, batch 16) or `make bench-large` (the family's large shape, batch 2: BLIP-large
    or Florence-2-base, 15-100 s a step here)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if large:
            # Sampled captions capped at 24 new tokens (FACAD's typical caption: random weights never end one),
            # then the 50-token worst case for MLE and H=4 only, on the same model.
            shape = LARGE_SHAPE[family]
            rows, wordmap, words = facad_rows(2, SHAPES[shape]["image_size"])
            built = (*build_model(shape, words, "cpu"), rows, wordmap)
            if family != "blip":
                # Florence-2-base's step is ~70 s here (DaViT at 768 px): MLE and H=4 only, 2 measured steps,
                # 24 sampled tokens, to stay within ~15 minutes on this machine
                return measure(shape, batch_size=2, warmup=1, steps=2, max_tokens=24, variants=("mle", "rl_h4"),
                               built=built)  # fmt: skip
            result = measure(shape, batch_size=2, warmup=1, steps=3, max_tokens=24, built=built)
            worst = measure(shape, batch_size=2, warmup=1, steps=2, max_tokens=50, variants=("mle", "rl_h4"),
                            built=built)  # fmt: skip
            result.update(rl_h4_over_mle_50=worst["rl_h4_over_mle"], rl_h4_50_s=worst["rl_h4_s"])
            return result
        return measure("tiny", batch_size=16, warmup=2, steps=7)
    finally:
        torch.set_num_threads(previous)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--large", action="store_true", help="the family's large shape, batch 2 (minutes per step on CPU)"
    )
    parser.add_argument("--family", default="blip", choices=LARGE_SHAPE, help="with --large: whose shape")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the cores are shared)"
    )
    cli = parser.parse_args()
    print(json.dumps(run(cli.large, cli.threads, cli.family), indent=2))
