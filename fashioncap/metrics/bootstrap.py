"""Bootstrap intervals over images for caption metrics, alone and paired (two runs on the same images).

Every corpus-level caption metric here is a function of sums over images: a mean of per-image scores, or corpus
BLEU from summed n-gram matches, totals and lengths. A resample is then a weighted sum (weights = how often it
drew each image), so all resamples are one matrix product, counts [n, images] @ per-image stats [images, k],
instead of a gather of shape [n, images, k].

A statistic is `statistic(totals, images) -> value`: `totals` are the per-image stats summed over a sample
(with any leading batch axes), `images` the sample's size. `mean`, `corpus_bleu` and `corpus_meteor` are in use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fashioncap.metrics.ids import describe_ids

Statistic = Callable[[np.ndarray, int], np.ndarray]
PerImage = Mapping[Any, float | Sequence[float]] | Sequence[float | Sequence[float]] | np.ndarray

# pycocoevalcap's BleuScorer guards: a zero count gives ~0 (not a division by zero) in a product of precisions
_BLEU_SMALL, _BLEU_TINY = 1e-9, 1e-15


def mean(totals: np.ndarray, images: int) -> np.ndarray:
    """The mean of per-image scores."""
    return totals / images


def corpus_bleu(totals: np.ndarray, images: int) -> np.ndarray:
    """Corpus BLEU-n, as pycocoevalcap's BleuScorer computes it, from summed per-image stats laid out as
    [hypothesis length, closest reference length, n-grams 1..n in the hypothesis, clipped matches 1..n]."""
    order = (totals.shape[-1] - 2) // 2
    hypothesis_length, reference_length = totals[..., 0], totals[..., 1]
    guesses, matches = totals[..., 2 : 2 + order], totals[..., 2 + order : 2 + 2 * order]
    precisions = (matches + _BLEU_TINY) / (guesses + _BLEU_SMALL)
    bleu = np.prod(precisions, axis=-1) ** (1.0 / order)
    ratio = (hypothesis_length + _BLEU_TINY) / (reference_length + _BLEU_SMALL)
    brevity_penalty = np.exp(1 - 1 / np.minimum(ratio, 1.0))  # 1 where the hypotheses are long enough
    return bleu * brevity_penalty


# METEOR 1.5's parameters for `-l en` (its default task, as pycocoevalcap runs it): alpha, beta, gamma, delta
# and the weights of its four matching stages (exact, stem, synonym, paraphrase)
_METEOR_ALPHA, _METEOR_BETA, _METEOR_GAMMA, _METEOR_DELTA = 0.85, 0.2, 0.6, 0.75
_METEOR_STAGE_WEIGHTS = np.array([1.0, 0.6, 0.8, 0.6])


def corpus_meteor(totals: np.ndarray, images: int) -> np.ndarray:
    """Corpus METEOR 1.5 as its EVAL command computes it from summed per-segment statistics (the line its SCORE
    command returns): [hypothesis length, reference length, hypothesis function words, reference function
    words, per stage (hypothesis content, reference content, hypothesis function, reference function matches),
    chunks, hypothesis word matches, reference word matches], where a segment that matches its reference
    exactly counts 0 chunks (as EVAL sums them)."""
    test_length, ref_length, test_function, ref_function = (totals[..., i] for i in range(4))
    stages = totals[..., 4:20].reshape(*totals.shape[:-1], 4, 4)  # [..., stage, (tc, rc, tf, rf)]
    chunks, word_matches = totals[..., 20], (totals[..., 21] + totals[..., 22]) / 2
    content, function = _METEOR_DELTA * _METEOR_STAGE_WEIGHTS, (1 - _METEOR_DELTA) * _METEOR_STAGE_WEIGHTS
    test_matches = stages[..., 0] @ content + stages[..., 2] @ function
    ref_matches = stages[..., 1] @ content + stages[..., 3] @ function
    test_weighted = _METEOR_DELTA * (test_length - test_function) + (1 - _METEOR_DELTA) * test_function
    ref_weighted = _METEOR_DELTA * (ref_length - ref_function) + (1 - _METEOR_DELTA) * ref_function
    with np.errstate(divide="ignore", invalid="ignore"):  # METEOR scores a division by zero as 0
        precision, recall = test_matches / test_weighted, ref_matches / ref_weighted
        f_mean = 1.0 / ((1 - _METEOR_ALPHA) / precision + _METEOR_ALPHA / recall)
        score = f_mean * (1 - _METEOR_GAMMA * (chunks / word_matches) ** _METEOR_BETA)
    return np.maximum(np.where(np.isnan(score), 0.0, score), 0.0)


def resample_counts(images: int, n: int, seed: int) -> np.ndarray:
    """How often each of n bootstrap resamples draws each image: float [n, images], every row summing to images."""
    picks = np.random.default_rng(seed).integers(images, size=(n, images))
    rows = np.arange(n)[:, None] * images
    return np.bincount((picks + rows).ravel(), minlength=n * images).reshape(n, images).astype(float)


def bootstrap_ci(
    per_image: PerImage, statistic: Statistic = mean, n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> list[float]:
    """[lo, hi]: the (alpha/2, 1 - alpha/2) percentile interval of `statistic` over n resamples of the images.

    `per_image`: one score or stats vector per image, as a sequence or a mapping keyed by image id (its order
    fixes which image each draw picks, so equal seeds and orders give equal resamples).
    """
    stats = _stats_matrix(per_image)
    counts = resample_counts(len(stats), n, seed)
    resampled = statistic(counts @ stats, len(stats))
    return _percentile_interval(resampled, alpha)


def paired_bootstrap(
    a_per_image: Mapping[Any, float | Sequence[float]],
    b_per_image: Mapping[Any, float | Sequence[float]],
    statistic: Statistic = mean,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """{"delta": statistic(a) - statistic(b), "ci95": [lo, hi]} with both runs resampled on the same images.

    Pairing removes the between-image variance both runs share, so a difference is resolved with far fewer
    images than two separate intervals need. The interval's key names its level (alpha 0.1 -> "ci90").
    Raises ValueError naming the images only one run scored.
    """
    only_a = [k for k in a_per_image if k not in b_per_image]
    only_b = [k for k in b_per_image if k not in a_per_image]
    if only_a or only_b:
        parts = [
            f"only run {run} scored {describe_ids(ids)}" for run, ids in (("a", only_a), ("b", only_b)) if ids
        ]
        raise ValueError(f"the two runs scored different images: {'; '.join(parts)}")
    ids = list(a_per_image)
    a = _stats_matrix([a_per_image[k] for k in ids])
    b = _stats_matrix([b_per_image[k] for k in ids])
    if a.shape != b.shape:
        raise ValueError(f"per-image stats of different shapes: {a.shape[1:]} and {b.shape[1:]}")
    counts = resample_counts(len(ids), n, seed)
    deltas = statistic(counts @ a, len(ids)) - statistic(counts @ b, len(ids))
    delta = statistic(a.sum(axis=0), len(ids)) - statistic(b.sum(axis=0), len(ids))
    return {"delta": float(delta), f"ci{100 * (1 - alpha):g}": _percentile_interval(deltas, alpha)}


def _stats_matrix(per_image: PerImage) -> np.ndarray:
    """Per-image scores as float [images] or stats as float [images, k], in the given order."""
    values = list(per_image.values()) if isinstance(per_image, Mapping) else per_image
    stats = np.asarray(values, dtype=float)
    if stats.ndim not in (1, 2) or len(stats) == 0:
        raise ValueError(
            f"expected one score or stats vector per image, for 1+ images; got shape {stats.shape}"
        )
    return stats


def _percentile_interval(resampled: np.ndarray, alpha: float) -> list[float]:
    lo, hi = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]
