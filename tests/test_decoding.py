"""The shared-K/V decoding engine against transformers' own paths, fp32 on CPU: same tokens, same numbers.

Random weights give near-uniform next-token distributions, where float noise could flip an argmax; the
decoders' weight matrices are scaled up so the choices are clear, and the [SEP] logit is raised so captions
end at varied lengths (and some never do).
"""

import logging

import pytest
import torch
from transformers import BlipTextConfig, BlipTextLMHeadModel

from fashioncap import decoding
from fashioncap.decoding import DecoderStep, decode, decoder_logits, encode_images, image_memory
from fashioncap.inference import caption_pixels
from fashioncap.models import build_tiny_model
from fashioncap.models.blip import build_tiny, lora_target_regex, sdpa_attention
from fashioncap.models.lora import apply_lora

SEP, PAD = 3, 0
RELATIVE = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sharpen(decoder, scale: float, sep_bias: float) -> None:
    """Scale the decoder's matrices and raise [SEP]'s logit (see the module docstring)."""
    with torch.no_grad():
        for parameter in decoder.parameters():
            if parameter.dim() == 2:
                parameter.mul_(scale)
        decoder.cls.predictions.decoder.bias[SEP] += sep_bias


def tiny_blip(seed: int = 0):
    model, _ = build_tiny([f"word{i}" for i in range(40)], seed=seed)
    sharpen(model.text_decoder, scale=5.0, sep_bias=2.0)
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    model = tiny_blip()
    torch.manual_seed(1)
    return model, torch.randn(5, 3, 64, 64)


@pytest.fixture(scope="module")
def large_decoder():
    """BLIP-large's text decoder shape (fewer layers, smaller vocabulary) and 577 random image tokens."""
    config = BlipTextConfig(
        vocab_size=600, hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12,
        encoder_hidden_size=1024, pad_token_id=PAD, bos_token_id=5, eos_token_id=SEP, sep_token_id=SEP,
    )  # fmt: skip
    torch.manual_seed(2)
    decoder = BlipTextLMHeadModel(config).eval()
    sharpen(decoder, scale=4.0, sep_bias=2.0)
    return decoder, torch.randn(3, 577, 1024)


def generate(decoder, image_embeds, **kwargs):
    start = torch.full((image_embeds.size(0), 1), decoder.config.bos_token_id)
    return decoder.generate(
        input_ids=start, attention_mask=torch.ones_like(start), encoder_hidden_states=image_embeds,
        eos_token_id=SEP, pad_token_id=PAD, **kwargs,
    )  # fmt: skip


def pad_after_sep(sequences):
    """generate's beam search pads with [SEP] when pad_token_id is 0; decode pads with [PAD]."""
    is_sep = (sequences == SEP).long()
    return sequences.masked_fill(is_sep.cumsum(1) - is_sep > 0, PAD)


def relative_error(new, reference) -> float:
    return ((new - reference).abs().max() / reference.abs().max()).item()


SETTINGS = {
    "greedy": dict(max_new_tokens=12),
    "greedy_min5": dict(max_new_tokens=12, min_new_tokens=5),
    "beam3": dict(num_beams=3, max_new_tokens=12),
    "beam3_return2_min3": dict(num_beams=3, num_return_sequences=2, max_new_tokens=12, min_new_tokens=3),
    "beam4_penalty": dict(num_beams=4, max_new_tokens=8, length_penalty=0.5),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_decode_matches_blip_generate_from_pixels(tiny, name):
    model, pixel_values = tiny
    expected = pad_after_sep(model.generate(pixel_values=pixel_values, **SETTINGS[name]))
    image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    got = decode(model, image_embeds, **SETTINGS[name])
    assert torch.equal(got, expected)
    lengths = (got != PAD).sum(1)
    assert lengths.min() < lengths.max(), "captions of varied length"


@pytest.mark.parametrize("name", ["greedy", "beam3"])
def test_decode_matches_generate_at_blip_large_shape(large_decoder, name):
    decoder, image_embeds = large_decoder
    settings = {**SETTINGS[name], "max_new_tokens": 16}
    got = decode(decoder, image_embeds, **settings)
    assert torch.equal(got, pad_after_sep(generate(decoder, image_embeds, **settings)))
    assert got.size(1) > 3


def test_sampling_matches_generate_draw_for_draw_and_memory_is_reusable(tiny):
    model, pixel_values = tiny
    image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    settings = dict(do_sample=True, num_return_sequences=4, temperature=0.7, top_k=5, max_new_tokens=12)
    torch.manual_seed(0)
    expected = generate(model.text_decoder, image_embeds, **settings)
    with torch.no_grad():
        memory = image_memory(model, image_embeds)
    torch.manual_seed(0)
    assert torch.equal(decode(model, memory, **settings), expected)
    torch.manual_seed(0)
    full = generate(model.text_decoder, image_embeds, do_sample=True, top_k=0, max_new_tokens=12)
    torch.manual_seed(0)
    assert torch.equal(decode(model, memory, do_sample=True, top_k=0, max_new_tokens=12), full)


def lora_blip():
    """The trial-4 LoRA (decoder + last vision layers), B nonzero so that every adapter shapes the output."""
    model = tiny_blip(seed=3)
    model = apply_lora(model, lora_target_regex("decoder+vision", 4, 2), r=4, alpha=8, dropout=0.0)
    torch.manual_seed(4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.2)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # train mode below (checkpointing runs only there), deterministic
    return model


def rows_per_image(references, samples, h):
    """[references; samples] (the trainer's order) -> image-major rows: each reference, then its h samples."""
    b, t = references.shape
    return torch.cat([references.view(b, 1, t), samples.view(b, h, t)], 1).view(-1, t)


def sequence_logprobs(logits, sequences, mask):
    """Summed log-probabilities of tokens 1.. given their prefixes, where `mask` is set."""
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, sequences[:, 1:, None]).squeeze(-1)
    return (logprobs * mask[:, 1:]).sum(1)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_kv_pass_matches_repeated_forward_with_lora_gradients(tiny, checkpointing):
    _, pixel_values = tiny
    model = lora_blip()
    blip, h = model.get_base_model(), 3
    with torch.no_grad():
        image_embeds = blip.vision_model(pixel_values=pixel_values).last_hidden_state
        torch.manual_seed(5)
        samples = decode(blip, image_embeds, do_sample=True, num_return_sequences=h, max_new_tokens=10)
    b, t = pixel_values.size(0), samples.size(1)
    references = torch.randint(6, 46, (b, t))
    reference_mask = (torch.arange(t) < torch.randint(3, t + 1, (b, 1))).long()
    is_sep = (samples == SEP).long()
    sample_mask = (is_sep.cumsum(1) - is_sep == 0).long()  # up to and including [SEP]
    input_ids = rows_per_image(references, samples, h)
    attention_mask = rows_per_image(reference_mask, sample_mask, h)
    assert (sample_mask.sum(1) < t).any() and (sample_mask.sum(1) == t).any()

    if checkpointing:
        blip.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    assert any(".vision_model." in n for n, _ in model.named_parameters() if "lora_" in n)

    def run(logits_of):
        image_embeds = blip.vision_model(pixel_values=pixel_values).last_hidden_state
        logits = logits_of(image_embeds)
        logprobs = sequence_logprobs(logits, input_ids, attention_mask)
        grads = torch.autograd.grad(logprobs.sum(), adapters)
        return logits, logprobs, torch.cat([g.flatten() for g in grads])

    new = run(lambda embeds: decoder_logits(blip, input_ids, attention_mask, embeds))
    plain = run(
        lambda embeds: blip.text_decoder(
            input_ids=input_ids, attention_mask=attention_mask,
            encoder_hidden_states=embeds.repeat_interleave(1 + h, 0),
        ).logits
    )  # fmt: skip
    valid = attention_mask.bool()
    assert relative_error(new[0][valid], plain[0][valid]) < RELATIVE
    assert relative_error(new[1], plain[1]) < RELATIVE
    assert relative_error(new[2], plain[2]) < RELATIVE
    assert plain[2].abs().max() > 0


def test_without_dropout_the_pass_and_its_checkpointed_backward_ignore_the_train_mode(tiny):
    """`dropout=False` (how the trainer scores its samples): with LoRA dropout 0.5 and the model in train mode,
    logits and gradients equal eval mode's, with gradient checkpointing too (its recomputation runs without
    dropout as well: no CheckpointError, no silently different activations)."""
    _, pixel_values = tiny
    model = lora_blip()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    blip = model.get_base_model()
    input_ids = torch.randint(6, 46, (pixel_values.size(0) * 3, 7))
    mask = torch.ones_like(input_ids)
    adapters = [p for n, p in model.named_parameters() if "lora_" in n and "text_decoder" in n]
    with torch.no_grad():
        embeds = blip.eval().vision_model(pixel_values=pixel_values).last_hidden_state  # the rollout's

    def run(train: bool, checkpointing: bool):
        model.train(train)
        if checkpointing:
            blip.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            blip.activation_checkpointing_disable()
        logits = decoder_logits(blip, input_ids, mask, embeds, dropout=False)
        grads = torch.autograd.grad(logits.square().mean(), adapters)
        return logits.detach(), torch.cat([g.flatten() for g in grads])

    reference = run(train=False, checkpointing=False)
    for checkpointing in (False, True):
        logits, grads = run(train=True, checkpointing=checkpointing)
        assert relative_error(logits, reference[0]) < RELATIVE
        assert relative_error(grads, reference[1]) < RELATIVE


def test_sdpa_attention_matches_eager_and_restores_the_modules(tiny, large_decoder):
    model, pixel_values = tiny
    input_ids = torch.randint(6, 46, (5, 9))
    attention_mask = (torch.arange(9) < torch.tensor([[9], [4], [6], [9], [2]])).long()
    valid = attention_mask.bool()

    def forward():
        out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return out.image_embeds, out.logits

    eager = forward()
    with sdpa_attention(model):
        with sdpa_attention(model):
            fused = forward()
        beams = model.generate(pixel_values=pixel_values, num_beams=3, max_new_tokens=10)
        assert "forward" in vars(model.vision_model.encoder.layers[0].self_attn)
    assert "forward" not in vars(model.vision_model.encoder.layers[0].self_attn)
    assert relative_error(fused[0], eager[0]) < RELATIVE
    assert relative_error(fused[1][valid], eager[1][valid]) < RELATIVE
    assert torch.equal(beams, model.generate(pixel_values=pixel_values, num_beams=3, max_new_tokens=10))

    decoder, image_embeds = large_decoder
    ids = torch.randint(6, 600, (3, 7))
    eager = decoder(input_ids=ids, encoder_hidden_states=image_embeds).logits
    with sdpa_attention(decoder):
        assert (
            relative_error(decoder(input_ids=ids, encoder_hidden_states=image_embeds).logits, eager)
            < RELATIVE
        )


@pytest.mark.parametrize(
    "settings",
    [
        dict(num_beams=3, do_sample=True),
        dict(num_return_sequences=2),
        dict(num_beams=2, num_return_sequences=3),
        dict(max_new_tokens=65),
    ],
)
def test_decode_refuses_what_it_cannot_do(tiny, settings):
    model, pixel_values = tiny
    image_embeds = torch.zeros(1, 17, 128)
    with pytest.raises(ValueError):
        decode(model, image_embeds, **{"max_new_tokens": 5, **settings})


CAPTURED_PATHS = {  # the rollout's samples and greedy baseline, eval's and `caption`'s beams
    "samples": dict(do_sample=True, num_return_sequences=3, top_k=0, max_new_tokens=12),
    "greedy": SETTINGS["greedy"],
    "beam3": SETTINGS["beam3_return2_min3"],
}


def graph_failures(monkeypatch, caplog, capture=None, replay=None) -> list[int]:
    """Make CUDA graphs fail as a card might (CPU has none to capture: the capture/replay calls are replaced),
    from a process where none has failed yet; the list counts the capture attempts."""
    attempts = []

    def fake_capture(step, rows):
        attempts.append(rows)
        if capture:
            raise capture
        step._graph = "captured"

    def fake_replay(step, tokens, position):
        raise replay

    monkeypatch.setattr(decoding, "_cuda_graphs_failure", None)
    monkeypatch.setattr(DecoderStep, "_capture", fake_capture)
    monkeypatch.setattr(DecoderStep, "_replay", fake_replay)
    caplog.set_level(logging.WARNING, logger="fashioncap.decoding")
    return attempts


def eager_and_forced(model, image_embeds, settings) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    eager = decode(model, image_embeds, cuda_graphs=False, **settings)
    torch.manual_seed(0)
    return eager, decode(model, image_embeds, cuda_graphs=True, **settings)


@pytest.mark.parametrize(
    "failure",
    [dict(capture=RuntimeError("CUDA error: operation not permitted when stream is capturing\nat line 2")),
     dict(replay=RuntimeError("CUDA error: an illegal instruction was encountered"))],
    ids=["capture", "replay"],
)  # fmt: skip
def test_a_failing_cuda_graph_falls_back_to_eager_once_for_the_whole_process(
    tiny, monkeypatch, caplog, failure
):
    """Capturing (or replaying) the decoder step raises: every decode path, `caption` included, gives the eager
    captions, with one warning line naming the error, and no later decode tries a graph again."""
    model, pixel_values = tiny
    attempts = graph_failures(monkeypatch, caplog, **failure)
    image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    for settings in CAPTURED_PATHS.values():
        eager, forced = eager_and_forced(model, image_embeds, settings)
        assert torch.equal(forced, eager)
    eager = caption_pixels(model, pixel_values, cuda_graphs=False, **SETTINGS["beam3"])
    assert torch.equal(caption_pixels(model, pixel_values, cuda_graphs=True, **SETTINGS["beam3"]), eager)
    assert len(attempts) == 1, "a graph was tried again after one failed"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    error = next(iter(failure.values()))
    assert str(error).splitlines()[0] in warnings[0].getMessage()
    assert decoding.cuda_graphs_failure() is not None


def test_cuda_graphs_false_never_tries_a_graph(tiny, monkeypatch, caplog):
    model, pixel_values = tiny
    attempts = graph_failures(monkeypatch, caplog, capture=RuntimeError("never raised"))
    image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    decode(model, image_embeds, cuda_graphs=False, **SETTINGS["greedy"])
    assert attempts == [] and decoding.cuda_graphs_failure() is None and not caplog.records


# --- Florence-2: the same engine through its family's TextDecoder -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_florence2():
    """The tiny Florence-2 stand-in, 3 random images, and the prompt ids `generate` takes (image tokens first)."""
    model, processor = build_tiny_model([f"word{i}" for i in range(40)], family_name="florence2")
    torch.manual_seed(1)
    pixel_values = torch.randn(3, 3, 64, 64)
    image_tokens = torch.full((3, processor.image_processor.image_seq_length), model.config.image_token_id)
    input_ids = torch.cat([image_tokens, model.caption_prompt_ids.expand(3, -1)], 1)
    return model.eval(), pixel_values, input_ids


FLORENCE2_SETTINGS = {
    **SETTINGS,
    "sample_top5": dict(do_sample=True, num_return_sequences=4, temperature=0.7, top_k=5, max_new_tokens=12),
    "sample_full": dict(do_sample=True, top_k=0, max_new_tokens=12),
}


@pytest.mark.parametrize("name", FLORENCE2_SETTINGS)
def test_decode_matches_florence2_generate_draw_for_draw(tiny_florence2, name):
    model, pixel_values, input_ids = tiny_florence2
    torch.manual_seed(0)
    expected = model.generate(input_ids=input_ids, pixel_values=pixel_values, **FLORENCE2_SETTINGS[name])
    torch.manual_seed(0)
    assert torch.equal(
        decode(model, encode_images(model, pixel_values), **FLORENCE2_SETTINGS[name]), expected
    )


def test_florence2_teacher_forced_logits_match_its_forward(tiny_florence2):
    model, pixel_values, input_ids = tiny_florence2
    torch.manual_seed(0)
    samples = decode(model, encode_images(model, pixel_values), **FLORENCE2_SETTINGS["sample_top5"])
    lengths = (samples != model.config.text_config.pad_token_id).sum(1)
    assert lengths.min() < lengths.max(), "captions of varied length"
    mask = (torch.arange(samples.size(1)) < lengths[:, None]).long()
    with torch.no_grad():
        expected = model(
            input_ids=input_ids.repeat_interleave(4, 0), pixel_values=pixel_values.repeat_interleave(4, 0),
            decoder_input_ids=samples, decoder_attention_mask=mask,
        ).logits  # fmt: skip
        got = decoder_logits(model, samples, mask, encode_images(model, pixel_values))
    assert relative_error(got[mask.bool()], expected[mask.bool()]) < RELATIVE
