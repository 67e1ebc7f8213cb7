"""Shared-K/V decoding (`fashioncap.decoding`) against transformers' paths, side by side at BLIP-large shape.

Three comparisons, each old and new interleaved in one process (so a neighbour's load on the shared cores hits
both alike), median of `repeats` after one warm-up each:
- `decode_fast_over_generate`: beam-3 captions, batch 8, at most 24 new tokens: `text_decoder.generate` with
  the image embeddings (what `blip.generate` does after its vision pass) vs `decode`; and whether the captions
  agree;
- rollout pieces, batch 2, H=4, trial LoRA (r16 on the decoder): sampling H captions per image (`generate` on
  repeated embeddings vs `decode`), then the log-prob pass over references + samples with backward (the plain
  forward on repeated embeddings vs `decoder_logits`), capped at 24 and at 50 sampled tokens;
- `sdpa_over_eager`: a MLE step (forward + backward, vision + decoder, batch 2, trial-4 LoRA) with BLIP's
  eager attention vs under `sdpa_attention`. The vision encoder has 6 layers, not 24, to fit the time budget:
  with LoRA on all 6, the backward is trial 4's (LoRA on the last 6 of 24; no gradient flows below them), the
  forward a quarter of it.

Random weights, random image embeddings [B, 577, 1024]: vision is not needed for the decoding figures. Random
weights never emit [SEP], so every caption runs to its cap (the worst case), and beam scores are near-ties, so
`decode_fast_same_captions` can be false from float noise alone (the tests pin exactness where choices are
clear). One torch thread throughout (bench.run's default): the 2 cores are shared.

    python -m bench.bench_decoding      # JSON on stdout, about 5 minutes on this 2-core machine
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

THREADS = 1
IMAGE_TOKENS = 577
BOS, SEP, PAD = 30522, 102, 0


def build_blip(vision_layers: int, seed: int = 0):
    """BLIP-large's shape with random weights; `vision_layers` of its 24 vision layers."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    from bench.bench_train_step import LARGE_TEXT, LARGE_VISION

    ids = dict(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=SEP, sep_token_id=SEP)
    config = BlipConfig(
        vision_config={**LARGE_VISION, "num_hidden_layers": vision_layers}, text_config={**LARGE_TEXT, **ids}
    )
    torch.manual_seed(seed)
    return BlipForConditionalGeneration(config).eval()


def with_lora(blip, preset: str):
    """The trials' LoRA (r16, alpha 32, dropout 0.05); returns the BLIP inside, its modules now adapted."""
    from fashioncap.models.blip import lora_target_regex
    from fashioncap.models.lora import apply_lora

    layers = blip.config.vision_config.num_hidden_layers
    return apply_lora(
        blip, lora_target_regex(preset, layers, layers), r=16, alpha=32, dropout=0.05
    ).get_base_model()


def generate_from_embeds(blip, image_embeds: torch.Tensor, **kwargs) -> torch.Tensor:
    """BLIP's generate minus its vision pass (generate repeats the image embeddings per beam/sample)."""
    start = torch.full((image_embeds.size(0), 1), BOS)
    return blip.text_decoder.generate(
        input_ids=start, attention_mask=torch.ones_like(start), encoder_hidden_states=image_embeds,
        encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long), eos_token_id=SEP,
        pad_token_id=PAD, **kwargs,
    )  # fmt: skip


def side_by_side(variants: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run round-robin after one warm-up round."""
    times = {name: [] for name in variants}
    for round_ in range(repeats + 1):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            print(f"[decoding] {name} round {round_}: {elapsed:.2f} s", file=sys.stderr, flush=True)
            if round_:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def engine_over_generate(model, generate, memory: torch.Tensor, settings: dict, repeats: int) -> dict:
    """`generate(model, memory, **settings)` vs the engine's `decode`, each seeded alike (sampled draws
    compare), and whether they give the same captions (after each one's end token: padding)."""
    from fashioncap.decoding import decode, text_decoder
    from fashioncap.rl import completion_mask

    out = {}

    def seeded(name, draw):
        torch.manual_seed(0)
        with torch.no_grad():
            out[name] = draw()

    seconds = side_by_side(
        {
            "generate": lambda: seeded("old", lambda: generate(model, memory, **settings)),
            "decode": lambda: seeded("new", lambda: decode(model, memory, **settings)),
        },
        repeats,
    )
    decoder = text_decoder(model)
    old = out["old"].masked_fill(completion_mask(out["old"], decoder.eos_token_id) == 0, decoder.pad_token_id)
    return {
        "batch": memory.size(0),
        **settings,
        "generate_s": round(seconds["generate"], 3),
        "decode_s": round(seconds["decode"], 3),
        "decode_fast_over_generate": round(seconds["generate"] / seconds["decode"], 2),
        "decode_fast_same_captions": old.shape == out["new"].shape and torch.equal(old, out["new"]),
        "new_tokens": out["new"].size(1) - 1,
    }


def decode_fast_over_generate(
    blip, batch: int = 8, beams: int = 3, max_new_tokens: int = 24, repeats: int = 2
):
    """Beam search from image embeddings: `text_decoder.generate` vs `decode`."""
    image_embeds = torch.randn(batch, IMAGE_TOKENS, blip.config.text_config.encoder_hidden_size)
    settings = dict(num_beams=beams, max_new_tokens=max_new_tokens)
    return engine_over_generate(blip, generate_from_embeds, image_embeds, settings, repeats)


def rollout(
    blip, max_new_tokens: int, batch: int = 2, h: int = 4, reference_tokens: int = 30, repeats: int = 2
):
    """H samples per image (eval mode, no gradient), then the log-prob pass over references + samples with
    backward (train mode): the trainer's two decoder pieces, old and new. The loss is the MLE of the
    references plus the summed log-probabilities of the samples; the image embeddings stand in for the vision
    output (gradient kept)."""
    from fashioncap.decoding import decode, decoder_logits

    width = blip.config.text_config.encoder_hidden_size
    image_embeds = torch.randn(batch, IMAGE_TOKENS, width, requires_grad=True)
    references = torch.randint(1000, 30000, (batch, reference_tokens))
    references[:, 0] = BOS
    settings = dict(do_sample=True, top_k=0, max_new_tokens=max_new_tokens)
    samples = {}

    def sample(name, draw):
        blip.eval()
        with torch.no_grad():
            samples[name] = draw()

    def rows(new: bool):
        """[references; samples] padded to one length; image-major for `new` (a reference, its h samples)."""
        drawn = samples["new" if new else "old"]
        length = max(reference_tokens, drawn.size(1))
        refs, drawn = (
            F.pad(references, (0, length - reference_tokens)),
            F.pad(drawn, (0, length - drawn.size(1))),
        )
        if new:
            ids = torch.cat([refs.view(batch, 1, -1), drawn.view(batch, h, -1)], 1).view(-1, length)
        else:
            ids = torch.cat([refs, drawn])
        return ids, (ids != PAD).long()

    def logprob_pass(new: bool):
        blip.train()
        ids, mask = rows(new)
        if new:
            logits = decoder_logits(blip, ids, mask, image_embeds)
        else:
            states = torch.cat([image_embeds, image_embeds.repeat_interleave(h, 0)])
            logits = blip.text_decoder(
                input_ids=ids, attention_mask=mask, encoder_hidden_states=states
            ).logits
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        F.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="sum"
        ).backward()
        blip.zero_grad(set_to_none=True)
        image_embeds.grad = None

    seconds = side_by_side(
        {
            "sample_generate": lambda: sample(
                "old",
                lambda: generate_from_embeds(blip, image_embeds.detach().repeat_interleave(h, 0), **settings),
            ),
            "sample_decode": lambda: sample(
                "new", lambda: decode(blip, image_embeds.detach(), num_return_sequences=h, **settings)
            ),
            "logprob_plain": lambda: logprob_pass(new=False),
            "logprob_shared": lambda: logprob_pass(new=True),
        },
        repeats,
    )
    blip.eval()
    old = seconds["sample_generate"] + seconds["logprob_plain"]
    new = seconds["sample_decode"] + seconds["logprob_shared"]
    return {
        "batch": batch,
        "h": h,
        "max_new_tokens": max_new_tokens,
        "sampled_tokens": samples["new"].size(1) - 1,
        **{f"{name}_s": round(s, 3) for name, s in seconds.items()},
        "sample_fast_over_generate": round(seconds["sample_generate"] / seconds["sample_decode"], 2),
        "logprob_shared_over_plain": round(seconds["logprob_plain"] / seconds["logprob_shared"], 2),
        "rollout_old_s": round(old, 3),
        "rollout_new_s": round(new, 3),
        "rollout_new_over_old": round(old / new, 2),
    }


def sdpa_over_eager(blip, batch: int = 2, caption_tokens: int = 32, repeats: int = 2):
    """A MLE step, forward + backward of vision and decoder: eager attention vs `sdpa_attention`."""
    from fashioncap.models.blip import sdpa_attention

    size = blip.config.vision_config.image_size
    pixel_values = torch.randn(batch, 3, size, size)
    input_ids = torch.randint(1000, 30000, (batch, caption_tokens))
    input_ids[:, 0] = BOS
    attention_mask = torch.ones_like(input_ids)
    blip.train()

    def step():
        blip(
            pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=input_ids
        ).loss.backward()
        blip.zero_grad(set_to_none=True)

    def fused():
        with sdpa_attention(blip):
            step()

    seconds = side_by_side({"eager": step, "sdpa": fused}, repeats)
    blip.eval()
    return {
        "batch": batch,
        "caption_tokens": caption_tokens,
        "vision_layers": blip.config.vision_config.num_hidden_layers,
        "eager_s": round(seconds["eager"], 3),
        "sdpa_s": round(seconds["sdpa"], 3),
        "sdpa_over_eager": round(seconds["eager"] / seconds["sdpa"], 2),
    }


# --- Florence-2-base ---------------------------------------------------------------------------------------------


def florence2_generate_from_memory(model, encoder_states: torch.Tensor, **kwargs) -> torch.Tensor:
    """Florence-2's generate minus its vision tower and BART encoder, from the encoder's output (what
    `encode_images` returns): generate expands it per beam/sample and caches every row's cross-attention K/V."""
    from transformers.modeling_outputs import BaseModelOutput

    return model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states), **kwargs)


def run_florence2(
    batch: int = 8, samples_batch: int = 2, h: int = 4, max_new_tokens: int = 24, repeats: int = 2
):
    """At Florence-2-base shape, from random encoder states [B, 577 image tokens + the caption prompt, 768]:
    beam-3 captions (batch 8) and, with the trials' decoder LoRA, H=4 sampled captions per image (batch 2, the
    rollout's sampling), `generate` vs the engine, both seeded alike."""
    from bench.bench_train_step import FLORENCE2_BASE_TEXT, build_base_florence2
    from fashioncap.models import lora_targets
    from fashioncap.models.lora import apply_lora

    model, processor = build_base_florence2([])
    model.eval()
    tokens = processor.image_processor.image_seq_length + model.caption_prompt_ids.numel()
    width = FLORENCE2_BASE_TEXT["d_model"]
    result = {"torch_threads": THREADS, "shape": "florence2-base", "memory_tokens": tokens}
    result["beam"] = engine_over_generate(
        model, florence2_generate_from_memory, torch.randn(batch, tokens, width),
        dict(num_beams=3, max_new_tokens=max_new_tokens), repeats,
    )  # fmt: skip
    model = apply_lora(
        model, lora_targets(model, "decoder", 0), r=16, alpha=32, dropout=0.05
    ).get_base_model()
    result["sample"] = engine_over_generate(
        model.eval(), florence2_generate_from_memory, torch.randn(samples_batch, tokens, width),
        dict(do_sample=True, top_k=0, num_return_sequences=h, max_new_tokens=max_new_tokens), repeats,
    )  # fmt: skip
    return result


def run(family: str = "blip") -> dict:
    """BLIP-large's figures, or (`family` florence2) Florence-2-base's engine-vs-generate figures."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    try:
        if family == "florence2":
            result = run_florence2()
            result["total_s"] = round(time.perf_counter() - started, 1)
            return result
        decoder_only = build_blip(vision_layers=1)  # the vision encoder is not used by the decoding figures
        result = {"torch_threads": THREADS, "beam": decode_fast_over_generate(decoder_only)}
        with_lora(decoder_only, "decoder")
        result.update({f"rollout_{cap}": rollout(decoder_only, max_new_tokens=cap) for cap in (24, 50)})
        del decoder_only
        result["mle"] = sdpa_over_eager(with_lora(build_blip(vision_layers=6), "decoder+vision"))
    finally:
        torch.set_num_threads(previous)
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()
