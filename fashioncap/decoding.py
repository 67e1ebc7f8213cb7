"""The text decoder with each image's cross-attention keys/values computed once and shared by all its rows.

Why: `generate` and the plain decoder forward take the image embeddings repeated once per row (per sample, per
beam, per reference), so every row recomputes the cross-attention K/V projections of all the image tokens (577
for BLIP-large), and beam search reorders that repeated cross-attention cache at every token. In
cross-attention every query attends to all image tokens and never to another query, so the rows of one image can
be folded into the query length instead: Q [images, heads, rows * T, d] against K/V [images, heads, tokens, d] is
the same arithmetic with K/V (and the LoRA on the cross-attention key/value) computed once per image, and
gradients through K/V flow once per image.

The engine is the same for every model family: the family (`fashioncap.models`, read from the model's config)
supplies its `TextDecoder` (embeddings, one layer's forward through its own submodules, cross-attention K/V of
image embeddings, the LM head, the special token ids) and `encode_images`. What transformers 5.24 offers
natively for BLIP (static cache, compiled generation) is not usable here: docs/design.md, "Model families".

So this module is the minimal engine: one layer function (the family's `TextDecoder.layer`) serves the
teacher-forced pass and the per-token step; the step has static shapes (preallocated self-attention cache,
position as a tensor) so that on CUDA it is captured once per `decode` call as a CUDA graph and replayed per
token (`cuda_graphs`, default on for CUDA unless `synced_gpus`: sharded parameters are gathered by hooks that a
replay would skip). Beam search pads finished beams with [PAD] (transformers' BLIP pads them with [SEP]); the
tokens up to the end token and the lengths are `generate`'s. If capturing or replaying a CUDA graph ever raises,
the process decodes eagerly from then on, after one warning saying why (`cuda_graphs_failure`): a card or driver
where graphs fail costs speed, never the run.

    with torch.no_grad():
        memory = image_memory(model, encode_images(model, pixel_values))   # K/V of every layer, once per image
    samples = decode(model, memory, do_sample=True, num_return_sequences=h, top_k=0, max_new_tokens=50)
    greedy = decode(model, memory, max_new_tokens=50)                     # the SCST baseline, same K/V
    captions = decode(model, encode_images(model, pixel_values), num_beams=3, max_new_tokens=50)
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fashioncap.attention import dropout_off
from fashioncap.models import family_of

# transformers' beam-search score for an impossible candidate (its arithmetic is kept, for identical beams).
_IMPOSSIBLE = -1.0e9

logger = logging.getLogger(__name__)
# Why CUDA graphs stopped for the rest of this process (None while they work): see `_give_up_cuda_graphs`.
_cuda_graphs_failure: str | None = None


def cuda_graphs_failure() -> str | None:
    """Why this process decodes without CUDA graphs after capturing or replaying one failed; None if none did."""
    return _cuda_graphs_failure


def _give_up_cuda_graphs(stage: str, error: Exception) -> None:
    """Eager decoding for the rest of the process, with one warning line (the first failure's)."""
    global _cuda_graphs_failure
    if _cuda_graphs_failure is None:
        _cuda_graphs_failure = (
            f"{stage} the decoder step as a CUDA graph failed ({type(error).__name__}: {error})"
        )
        logger.warning("%s; decoding without CUDA graphs from now on", " ".join(_cuda_graphs_failure.split()))


def text_decoder(model: torch.nn.Module):
    """The family's `TextDecoder` view of a captioner (PEFT-wrapped or not), or of its text decoder alone."""
    return family_of(model).TextDecoder(model)


def encode_images(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Image embeddings [images, tokens, width] that the decoder cross-attends to, computed once per image."""
    return family_of(model).encode_images(model, pixel_values)


@dataclass(frozen=True)
class ImageMemory:
    """Each decoder layer's cross-attention keys and values, once per image: [images, heads, tokens, d]."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @property
    def num_images(self) -> int:
        return self.keys[0].size(0)

    def detach(self) -> ImageMemory:
        return ImageMemory(tuple(k.detach() for k in self.keys), tuple(v.detach() for v in self.values))


def image_memory(model: torch.nn.Module, image_embeds: torch.Tensor) -> ImageMemory:
    """Project image embeddings [images, tokens, width] to every layer's cross-attention K/V (LoRA included).

    Computed with gradient when `image_embeds` or the projections require it; reuse one memory for several
    `decode` calls (samples and the greedy baseline) to project once.
    """
    return _as_memory(text_decoder(model), image_embeds)


def _as_memory(decoder, image: torch.Tensor | ImageMemory) -> ImageMemory:
    """`image` as it is when already projected, else every layer's K/V of these image embeddings."""
    if isinstance(image, ImageMemory):
        return image
    keys, values = zip(*(decoder.cross_keys_values(layer, image) for layer in decoder.layers), strict=True)
    return ImageMemory(keys, values)


def _teacher_forcing_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Causal and key-padding mask [rows, 1, T, T]; a query always sees itself: no empty softmax (NaN)."""
    length = attention_mask.size(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal & attention_mask.bool()[:, None, None, :]
    return allowed | torch.eye(length, dtype=torch.bool, device=attention_mask.device)


@contextlib.contextmanager
def dropout_disabled(module: torch.nn.Module):
    """Dropout off (LoRA's and attention's too) while the modules stay in training mode (gradient checkpointing
    still applies): how sampled captions are scored by the policy that drew them."""
    dropouts = [m for m in module.modules() if isinstance(m, torch.nn.Dropout) and m.training]
    for m in dropouts:
        m.eval()
    try:
        with dropout_off():
            yield
    finally:
        for m in dropouts:
            m.train()


def _layer_without_dropout(decoder, layer, *args) -> torch.Tensor:
    """A layer with its dropout off, inside the checkpointed function: the recomputation in backward then runs
    as the forward did (same values, same saved tensors) whatever the modules' mode is by then."""
    with dropout_disabled(layer):
        return decoder.layer(layer, *args)


def decoder_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image: torch.Tensor | ImageMemory,
    dropout: bool = True,
) -> torch.Tensor:
    """Logits [rows, T, vocab] of rows grouped per image, each image's cross-attention K/V computed once.

    `input_ids`/`attention_mask` [images * R, T] hold R consecutive rows per image (image-major), `image` is
    image_embeds [images, tokens, width] (or their ImageMemory). Equal, at the unpadded positions, gradients
    included, to the plain forward on repeated embeddings:

        states = image_embeds.repeat_interleave(R, 0)
        decoder(input_ids, attention_mask, encoder_hidden_states=states).logits   # the family's text decoder

    Padded positions are unspecified. Honours gradient checkpointing, and dropout like the stock layers unless
    `dropout` is False (then off everywhere, the cross-attention K/V projection included, and in recomputation).
    References and H samples per image, as the trainer holds them:

        rows = torch.cat([references.view(b, 1, t), samples.view(b, h, t)], 1).view(-1, t)   # and their masks
        logits = decoder_logits(model, rows, masks, image_embeds).view(b, 1 + h, t, -1)
        reference_logits, sample_logits = logits[:, 0], logits[:, 1:].flatten(0, 1)
    """
    decoder = text_decoder(model)
    layer_function = decoder.layer if dropout else functools.partial(_layer_without_dropout, decoder)
    with contextlib.nullcontext() if dropout else dropout_disabled(decoder.module):
        memory = _as_memory(decoder, image)
        if input_ids.size(0) % memory.num_images:
            raise ValueError(f"{input_ids.size(0)} rows do not split evenly over {memory.num_images} images")
        hidden = decoder.embed(input_ids)
        mask = _teacher_forcing_mask(attention_mask)
        for layer, keys, values in zip(decoder.layers, memory.keys, memory.values, strict=True):
            if layer.gradient_checkpointing and layer.training and torch.is_grad_enabled():
                run = functools.partial(layer_function, layer)
                hidden = layer._gradient_checkpointing_func(run, hidden, mask, keys, values)
            else:
                hidden = layer_function(layer, hidden, mask, keys, values)
        return decoder.logits(hidden)


@contextlib.contextmanager
def _autocast_uncached(device_type: str):
    """Autocast without its weight-cast cache while capturing, as PyTorch requires: the casts are recorded in
    the graph (redone per replay, from the current weights), not cached tensors freed when autocast exits."""
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    dtype = torch.get_autocast_dtype(device_type)
    with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
        yield


class DecoderStep:
    """One new token for every row: a preallocated self-attention cache and static shapes throughout.

    Rows are image-major (`rows_per_image` consecutive rows per image of `memory`). With `cuda_graphs` the
    step is captured once as a CUDA graph and replayed; the returned logits are then overwritten by the next
    call. A capture or replay that raises falls back to the eager step (`_give_up_cuda_graphs`): a failed replay
    is redone eagerly, which rewrites the same cache slot.
    """

    def __init__(self, decoder, memory: ImageMemory, rows_per_image: int, slots: int, cuda_graphs: bool):
        self.decoder, self.memory = decoder, memory
        images, heads, _, head_size = memory.keys[0].shape
        shape = (images * rows_per_image, heads, slots, head_size)
        like = memory.keys[0]
        self.caches = [(like.new_zeros(shape), like.new_zeros(shape)) for _ in memory.keys]
        self.slots = torch.arange(slots, device=like.device)
        self._graph = None
        if cuda_graphs:
            try:
                self._capture(shape[0])
            except Exception as error:  # noqa: BLE001 - any capture failure: decode eagerly instead
                self._graph = None
                _give_up_cuda_graphs("capturing", error)

    def __call__(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Float32 logits [rows, vocab] of the token after `tokens` [rows], fed at `position`."""
        position = self.slots[position : position + 1]
        if self._graph is not None:
            try:
                return self._replay(tokens, position)
            except Exception as error:  # noqa: BLE001 - any replay failure: this step and the rest eagerly
                self._graph = None
                _give_up_cuda_graphs("replaying", error)
        return self._forward(tokens, position)

    def reorder(self, source_rows: torch.Tensor, filled: int) -> None:
        """Beam search: row i continues row source_rows[i]; only the `filled` slots are copied, in place."""
        for cache in self.caches:
            for states in cache:
                states[:, :, :filled] = states[source_rows, :, :filled]

    def _forward(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder.embed(tokens[:, None], position[None])
        mask = (self.slots <= position).view(1, 1, 1, -1)
        for layer, cache, keys, values in zip(
            self.decoder.layers, self.caches, self.memory.keys, self.memory.values, strict=True
        ):
            hidden = self.decoder.layer(layer, hidden, mask, keys, values, cache, position)
        return self.decoder.logits(hidden[:, -1]).float()

    def _capture(self, rows: int) -> None:
        """Record `_forward` as a CUDA graph reading static token/position buffers (PyTorch's recipe: warm up
        on a side stream, then capture). The warm-up writes slot 0, which the first real step overwrites."""
        device = self.slots.device
        self._tokens = torch.zeros(rows, dtype=torch.long, device=device)
        self._position = torch.zeros(1, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), _autocast_uncached("cuda"):
            for _ in range(2):
                self._forward(self._tokens, self._position)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"), _autocast_uncached("cuda"):
            self._logits = self._forward(self._tokens, self._position)
        self._graph = graph

    def _replay(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        self._tokens.copy_(tokens)
        self._position.copy_(position)
        self._graph.replay()
        return self._logits


def truncated_samples(sequences: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True for each decoded caption ([DEC] first) that reached the length limit without its [SEP]: a caption
    cut short, not one the model finished (a reward scores it as it is; eval counts it in caption health)."""
    return ~(sequences[:, 1:] == eos_token_id).any(dim=1)


@torch.no_grad()
def decode(
    model: torch.nn.Module,
    image: torch.Tensor | ImageMemory,
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    num_return_sequences: int = 1,
    length_penalty: float = 1.0,
    synced_gpus: bool = False,
    cuda_graphs: bool | None = None,
) -> torch.LongTensor:
    """Captions from image embeddings [images, tokens, width] (or their ImageMemory), like `generate`'s.

    Greedy, multinomial sampling (temperature, then top-k renormalised; top_k 0/None: the full distribution),
    or beam search (transformers' algorithm: length_penalty, early_stopping=False). Returns [images *
    num_return_sequences, 1 + generated] token ids, image-major: [DEC] first, [PAD] after [SEP], cut at the
    longest. Stops once every sequence has ended, except under `synced_gpus` (DeepSpeed ZeRO-3/FSDP: every
    rank runs all max_new_tokens steps, as its collective parameter gathering needs). Runs the modules in
    their current mode, like `generate`: call it in eval mode.
    """
    decoder = text_decoder(model)
    if not 0 < max_new_tokens <= decoder.max_positions:
        raise ValueError(f"max_new_tokens must be in 1..{decoder.max_positions}, got {max_new_tokens}")
    if num_beams > 1 and do_sample:
        raise ValueError("beam sampling (num_beams > 1 with do_sample) is not supported")
    if not do_sample and num_return_sequences > num_beams:
        raise ValueError(
            f"num_return_sequences={num_return_sequences} needs sampling, or at least as many beams "
            f"(num_beams={num_beams})"
        )
    memory = _as_memory(decoder, image)
    if cuda_graphs is None:
        cuda_graphs = memory.keys[0].is_cuda and not synced_gpus
    cuda_graphs = cuda_graphs and _cuda_graphs_failure is None
    rows_per_image = num_beams if num_beams > 1 else num_return_sequences
    step = DecoderStep(decoder, memory, rows_per_image, max_new_tokens, cuda_graphs)
    ids = (decoder.bos_token_id, decoder.eos_token_id, decoder.pad_token_id)
    if num_beams > 1:
        return _beam_search(
            step, memory.num_images, num_beams, num_return_sequences, ids, max_new_tokens, min_new_tokens,
            length_penalty, synced_gpus,
        )  # fmt: skip
    sampling = (temperature, top_k) if do_sample else None
    return _greedy_or_sample(
        step, memory.num_images * rows_per_image, ids, max_new_tokens, min_new_tokens, sampling, synced_gpus
    )


def _forbid_end(scores: torch.Tensor, eos: int) -> torch.Tensor:
    """min_new_tokens: [SEP] impossible (out of place: the logits may be a CUDA graph's output buffer)."""
    return scores.index_fill(-1, torch.tensor([eos], device=scores.device), float("-inf"))


def _greedy_or_sample(step, rows, ids, max_new_tokens, min_new_tokens, sampling, synced_gpus):
    """`generate`'s greedy/multinomial loop: same processors in the same order, same RNG draws."""
    bos, eos, pad = ids
    device = step.slots.device
    sequences = torch.full((rows, max_new_tokens + 1), pad, dtype=torch.long, device=device)
    sequences[:, 0] = bos
    running = torch.ones(rows, dtype=torch.bool, device=device)
    length, done = 1, False
    for position in range(max_new_tokens):
        scores = step(sequences[:, position], position)
        if done:  # synced_gpus: keep the ranks in step, change nothing
            continue
        if position < min_new_tokens:
            scores = _forbid_end(scores, eos)
        if sampling is None:
            tokens = scores.argmax(dim=-1)
        else:
            temperature, top_k = sampling
            if temperature != 1.0:
                scores = scores / temperature
            if top_k:
                threshold = torch.topk(scores, min(top_k, scores.size(-1))).values[..., -1:]
                scores = scores.masked_fill(scores < threshold, float("-inf"))
            tokens = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        tokens = torch.where(running, tokens, pad)
        sequences[:, position + 1] = tokens
        running &= tokens != eos
        length = position + 2
        done = not bool(running.any())
        if done and not synced_gpus:
            break
    return sequences[:, :length]


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor[b, index[b, j], ...] for [images, beams, ...] tensors."""
    return torch.take_along_dim(tensor, index.view(*index.shape, *(1,) * (tensor.dim() - 2)), dim=1)


def _beam_search(
    step, images, beams, returned, ids, max_new_tokens, min_new_tokens, length_penalty, synced_gpus
):
    """transformers' vectorised beam search (early_stopping=False), with the cache reordered by `step`.

    Keeps 2 * beams candidates per image and step, so `beams` unfinished ones remain when some end with [SEP].
    """
    bos, eos, pad = ids
    device = step.slots.device
    candidates = 2 * beams
    sequences = torch.full((images, beams, max_new_tokens + 1), pad, dtype=torch.long, device=device)
    sequences[:, :, 0] = bos
    scores = torch.zeros(images, beams, device=device)
    scores[:, 1:] = _IMPOSSIBLE  # all beams start equal: expand the first one only
    finished = sequences.clone()
    finished_scores = torch.full((images, beams), _IMPOSSIBLE, device=device)
    finished_lengths = torch.zeros(images, beams, dtype=torch.long, device=device)
    is_finished = torch.zeros(images, beams, dtype=torch.bool, device=device)
    improvable = torch.ones(images, 1, dtype=torch.bool, device=device)
    first_beams = torch.arange(candidates, device=device) < beams
    row_offset = torch.arange(images, device=device).view(-1, 1) * beams
    done = False
    for position in range(max_new_tokens):
        logits = step(sequences[:, :, position].reshape(-1), position)
        if done:  # synced_gpus: keep the ranks in step, change nothing
            continue
        log_probs = F.log_softmax(logits, dim=-1)
        if position < min_new_tokens:
            log_probs = _forbid_end(log_probs, eos)
        vocab = log_probs.size(-1)
        totals = (log_probs.view(images, beams, vocab) + scores[:, :, None]).view(images, -1)
        top_scores, top_index = torch.topk(totals, candidates)
        source = torch.div(top_index, vocab, rounding_mode="floor")
        grown = _gather(sequences, source)
        grown[:, :, position + 1] = top_index % vocab
        ends = (grown[:, :, position + 1] == eos) | (position + 1 == max_new_tokens)

        running_scores = top_scores + ends.float() * _IMPOSSIBLE
        keep = torch.topk(running_scores, beams).indices
        sequences, scores = _gather(grown, keep), _gather(running_scores, keep)
        step.reorder((_gather(source, keep) + row_offset).view(-1), position + 1)

        ended_scores = top_scores / ((position + 1) ** length_penalty)
        ended_scores = ended_scores + (~improvable).float() * _IMPOSSIBLE
        newly_finished = ends & first_beams  # only the best `beams` candidates may finish
        ended_scores = ended_scores + (~newly_finished).float() * _IMPOSSIBLE
        best = torch.topk(torch.cat([finished_scores, ended_scores], 1), beams).indices
        finished = _gather(torch.cat([finished, grown], 1), best)
        finished_scores = _gather(torch.cat([finished_scores, ended_scores], 1), best)
        new_lengths = torch.full_like(ended_scores, position + 1, dtype=torch.long)
        finished_lengths = _gather(torch.cat([finished_lengths, new_lengths], 1), best)
        is_finished = _gather(torch.cat([is_finished, newly_finished], 1), best)

        # Could a running beam still beat the worst finished one (transformers' heuristic: at this length)?
        best_running = scores[:, :1] / ((position + 1) ** length_penalty)
        worst_finished = torch.where(
            is_finished, finished_scores.min(dim=1, keepdim=True).values, _IMPOSSIBLE
        )
        improvable = improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)
        done = not bool(improvable.any()) or bool(ends.all())
        if done and not synced_gpus:
            break
    length = 1 + int(finished_lengths[:, :returned].max())
    return finished[:, :returned, :length].reshape(images * returned, length)
