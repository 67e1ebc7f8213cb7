"""Bootstrap intervals: corpus BLEU from per-image stats = pycocoevalcap's Bleu(4), the resampling, the paired
comparison. No JVM: BLEU's stats come from pycocoevalcap's BleuScorer on pre-tokenised toy captions."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu

from fashioncap.metrics.bootstrap import (
    bootstrap_ci,
    corpus_bleu,
    mean,
    paired_bootstrap,
    resample_counts,
)
from fashioncap.metrics.coco_caption import bleu_scores

WORDS = "a red blue silk cotton dress skirt boots with strap pleated collar long sleeves soft".split()


def toy_corpus(images: int, seed: int, length_range: tuple[int, int]) -> tuple[dict, dict]:
    """Random captions: 1-3 references per image, a hypothesis of length_range words."""
    rng = random.Random(seed)

    def caption(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    gts = {i: [caption(4, 12) for _ in range(rng.randint(1, 3))] for i in range(images)}
    res = {i: [caption(*length_range)] for i in range(images)}
    return gts, res


@pytest.mark.parametrize("length_range", [(1, 6), (8, 16), (0, 12)], ids=["short", "long", "with-empty"])
def test_corpus_bleu_from_per_image_stats_is_pycocoevalcaps(length_range):
    """Short hypotheses take the brevity penalty, long ones none; an empty one has no n-grams at all."""
    gts, res = toy_corpus(300, seed=sum(length_range), length_range=length_range)
    stock, _ = Bleu(4).compute_score(gts, res, verbose=0)
    bleu, stats = bleu_scores(gts, res)
    assert bleu == stock
    totals = np.array(list(stats.values()), dtype=float).sum(axis=0)
    assert corpus_bleu(totals, len(stats)) == pytest.approx(stock[3], abs=1e-9, rel=0)
    assert 0 < stock[3] < 1


def test_bleu_stats_hand_computed():
    """'red silk dress' against 'a red dress' (3 words) and 'red dress' (2): closest length 3; the bigram
    'red dress' of the references is not in the hypothesis."""
    _, stats = bleu_scores({1: ["a red dress", "red dress"]}, {1: ["red silk dress"]})
    assert stats[1] == [3, 3, 3, 2, 1, 0, 2, 0, 0, 0]


def test_resample_counts():
    counts = resample_counts(images=50, n=200, seed=3)
    assert counts.shape == (200, 50)
    assert (counts.sum(axis=1) == 50).all() and (counts >= 0).all()
    assert np.array_equal(counts, resample_counts(images=50, n=200, seed=3))
    assert not np.array_equal(counts, resample_counts(images=50, n=200, seed=4))
    assert counts.mean() == pytest.approx(1.0)  # each image drawn once per resample on average


def test_bootstrap_ci_of_a_mean_has_the_normal_width():
    """For a mean the percentile interval is close to mean +- 1.96 sd / sqrt(images)."""
    rng = np.random.default_rng(0)
    values = rng.normal(0.5, 0.2, size=2000)
    lo, hi = bootstrap_ci(values, mean, n=2000, seed=1)
    half_width = 1.96 * values.std() / np.sqrt(len(values))
    assert lo < values.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half_width, rel=0.1)
    narrower = bootstrap_ci(values, mean, n=2000, seed=1, alpha=0.5)
    assert lo < narrower[0] < narrower[1] < hi


def test_bootstrap_ci_seeded_and_order_of_a_mapping():
    values = {f"img{i}": float(i % 7) for i in range(100)}
    first = bootstrap_ci(values, n=300, seed=5)
    assert first == bootstrap_ci(values, n=300, seed=5)
    assert first != bootstrap_ci(values, n=300, seed=6)
    assert first == bootstrap_ci(list(values.values()), n=300, seed=5)
    assert bootstrap_ci([0.25] * 40) == [0.25, 0.25]


def test_bootstrap_ci_of_bleu_brackets_the_corpus_value():
    gts, res = toy_corpus(400, seed=1, length_range=(3, 10))
    bleu, stats = bleu_scores(gts, res)
    lo, hi = bootstrap_ci(stats, corpus_bleu, n=500, seed=0)
    assert lo < bleu[3] < hi and hi - lo < 0.1


def test_bootstrap_ci_rejects_nothing_and_ragged_input():
    with pytest.raises(ValueError, match="1\\+ images"):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([[1.0, 2.0], [1.0]])


def test_paired_bootstrap_of_a_run_against_itself_and_a_shifted_copy():
    rng = np.random.default_rng(0)
    a = {i: float(v) for i, v in enumerate(rng.random(500))}
    same = paired_bootstrap(a, dict(reversed(a.items())))  # b's order does not matter: paired by image id
    assert same == {"delta": 0.0, "ci95": [0.0, 0.0]}
    shifted = paired_bootstrap(a, {k: v - 0.125 for k, v in a.items()})
    assert shifted["delta"] == pytest.approx(0.125)
    assert shifted["ci95"] == pytest.approx([0.125, 0.125])


def test_paired_interval_is_narrower_than_separate_ones():
    """Two runs that share most of their per-image variance: the pairing sees a difference of 0.02 that the
    separate intervals cannot tell apart."""
    rng = np.random.default_rng(1)
    difficulty = rng.random(1000)
    a = {i: float(d + 0.02 + rng.normal(0, 0.02)) for i, d in enumerate(difficulty)}
    b = {i: float(d + rng.normal(0, 0.02)) for i, d in enumerate(difficulty)}
    paired = paired_bootstrap(a, b, n=1000, seed=0)
    a_lo, a_hi = bootstrap_ci(a, n=1000, seed=0)
    b_lo, b_hi = bootstrap_ci(b, n=1000, seed=0)
    assert 0 < paired["ci95"][0] < paired["delta"] < paired["ci95"][1]
    assert a_lo < b_hi  # the separate intervals overlap
    assert paired["ci95"][1] - paired["ci95"][0] < (a_hi - a_lo) / 10


def test_paired_bootstrap_of_bleu_stats_and_the_level_in_the_key():
    gts, res = toy_corpus(200, seed=2, length_range=(3, 10))
    _, better = bleu_scores(gts, {k: [refs[0]] for k, refs in gts.items()})
    _, worse = bleu_scores(gts, res)
    result = paired_bootstrap(better, worse, corpus_bleu, n=300, seed=0, alpha=0.1)
    assert list(result) == ["delta", "ci90"]
    assert 0 < result["ci90"][0] < result["delta"] < result["ci90"][1]


def test_paired_bootstrap_names_the_images_only_one_run_scored():
    a = {i: 1.0 for i in range(10)}
    b = {i: 1.0 for i in range(2, 12)}
    with pytest.raises(ValueError) as err:
        paired_bootstrap(a, b)
    message = str(err.value)
    assert "only run a scored 2 image(s): 0, 1" in message
    assert "only run b scored 2 image(s): 10, 11" in message
    with pytest.raises(ValueError, match="shapes"):
        paired_bootstrap({1: [1.0, 2.0]}, {1: [1.0, 2.0, 3.0]})
