"""`make bench-large` at Florence-2-base shape: the shape built offline is the checkpoint's, and the section it
writes holds Florence-2's own goals beside BLIP's figures."""

import torch

from bench import run as bench_run


def test_the_florence2_base_stand_in_has_the_checkpoints_shape():
    """florence-community/Florence-2-base: 0.23B parameters, 768 px images as 577 tokens of width 768."""
    from bench.bench_train_step import build_base_florence2

    with torch.device("meta"):  # the shape alone: no weights are initialised
        model, processor = build_base_florence2(["red", "dress"])
        tokens = model.model.get_image_features(torch.zeros(1, 3, 768, 768)).pooler_output
    assert 0.225e9 < sum(p.numel() for p in model.parameters()) < 0.235e9
    assert tuple(tokens.shape) == (1, 577, 768) == (1, processor.image_processor.image_seq_length, 768)
    text = model.config.text_config
    assert (text.encoder_layers, text.decoder_layers, text.vocab_size) == (6, 6, 51289)
    assert len(processor.tokenizer) == 51289


def florence2_result(rl_h4_over_mle: float, beam_speedup: float) -> dict:
    decoding = {"torch_threads": 1, "memory_tokens": 584}
    for part, settings in (("beam", {"num_beams": 3}), ("sample", {"num_return_sequences": 4})):
        decoding[part] = {
            "batch": 2, "max_new_tokens": 24, "generate_s": 3.0, "decode_s": 1.0, **settings,
            "decode_fast_over_generate": beam_speedup if part == "beam" else 1.3, "decode_fast_same_captions": True,
        }  # fmt: skip
    return {
        "mle_s": 40.0, "rl_h4_s": 40.0 * rl_h4_over_mle, "rl_h4_over_mle": rl_h4_over_mle, "measured_steps": 2,
        "warmup_steps": 1, "reference_tokens": 28, "max_sample_tokens": 24, "rl_h4_sample_tokens": 24.0,
        "reward_funcs": ["als", "sls"], "trainer": "FashionCapTrainer", "mle_all_s": [40.0], "rl_h4_all_s": [47.0],
        "decoding": decoding,
    }  # fmt: skip


def test_the_florence2_section_judges_its_own_goals_and_has_no_seed_step():
    meta = {
        "machine": {"cpu": "cpu", "cores": 2, "ram_gib": 1, "python": "3", "torch": "t", "transformers": "5"},
        "command": "python -m bench.run --large --family florence2", "date": "today", "torch_threads": 1,
    }  # fmt: skip
    met = bench_run.large_section(meta, florence2_result(1.39, 2.1), "florence2")
    assert "Florence-2-base shape" in met and "seed" not in met.split("Train step")[0]
    assert "| `rl_h4_over_mle` | 1.39 | <= 1.4 | met |" in met
    assert "| `decode_fast_over_generate` | 2.1 | >= 2.0 | met |" in met
    missed = bench_run.large_section(meta, florence2_result(1.41, 1.9), "florence2")
    assert "| `rl_h4_over_mle` | 1.41 | <= 1.4 | **missed**" in missed
    assert "| `decode_fast_over_generate` | 1.9 | >= 2.0 | **not met**: each step reads" in missed
