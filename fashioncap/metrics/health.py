"""Caption health: the signs of a captioner that games its reward or collapses, which n-gram metrics hide.

RL on ALS/SLS has repeated attribute phrases ("a pair of plaid grey knee high boots in a pair of plaid grey knee
high boots"), run to the length limit, and drifted towards a few templates; these numbers count that. Repetition
and runs to the length limit are a collapse (`collapsed`); template reuse across images is reported on its own
(`template_reuse`): the references reuse templates too. Words are `normalize_text` words
(lower case, split on non-word characters), the tokenisation the rewards use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from fashioncap.text import normalize_text, word_ngrams

REPEAT_N = 3  # a caption "repeats" when one of its trigrams occurs twice: a bigram ("of the") can by chance
TOP_CAPTIONS = 5
# collapsed: more than this share of the captions repeat a trigram. The references never come near: 0 of the
# synthetic set's, 0.5% of the FACAD slice in tests/data (400), 0.13% of the 3,000-record FACAD text sample; the
# collapsed RL runs of issue 24: 85.5-92.5%.
COLLAPSE_REPEAT_SHARE = 0.2
# ... or more than this share run to the length limit without ending (a reference is never cut off; the
# collapsed runs: 81-91.5%) ...
COLLAPSE_LENGTH_LIMIT_SHARE = 0.2
# ... or the captions are empty (under 2 words on average: nothing to describe an item with).
COLLAPSE_MEAN_LENGTH = 2
# Template reuse, reported as its own flag (a captioner that writes the references' few templates is not
# broken): the TOP_CAPTIONS most common captions take more than this share of the images (counted only with
# 2 * TOP_CAPTIONS images on, below which distinct captions alone exceed it) ...
TEMPLATE_TOP_SHARE = 0.5
# ... or, with references, fewer distinct bigrams than this share of the references' (one per image, so the counts
# compare: the share falls as a set grows, and a small vocabulary such as the synthetic set's is low by nature) ...
TEMPLATE_DISTINCT_2_OF_REFERENCES = 0.5
# ... or, without references, fewer than this share of all bigram occurrences distinct (the FACAD sample's
# references: 0.79 over 200 captions, 0.53 over 2000)
TEMPLATE_DISTINCT_2 = 0.1


def collapse_signs(
    repeated_trigram_share: float, length_limit_share: float | None, mean_length: float | None = None
) -> list[str]:
    """What says the captions collapsed, in words ([] when healthy): the thresholds above, which no reference
    set reaches. Used by evaluation (`collapsed`) and by the training guard (fashioncap.collapse_guard)."""
    signs = []
    if repeated_trigram_share > COLLAPSE_REPEAT_SHARE:
        signs.append(f"{repeated_trigram_share:.0%} repeat a trigram (references: under 1%)")
    if length_limit_share is not None and length_limit_share > COLLAPSE_LENGTH_LIMIT_SHARE:
        signs.append(f"{length_limit_share:.0%} run to the length limit")
    if mean_length is not None and mean_length < COLLAPSE_MEAN_LENGTH:
        signs.append(f"{mean_length:.1f} words on average")
    return signs


def caption_health(
    captions: Sequence[str],
    references: Sequence[Sequence[str]] | None = None,
    max_new_tokens_hits: Sequence[bool] | None = None,
) -> dict:
    """Diversity, repetition, length and collapse numbers for one caption per image.

    Returns {"num_captions", "distinct_1", "distinct_2" (distinct n-grams / all n-grams across the captions),
    "vocabulary_size", "repeated_trigram_share" (captions with a trigram twice), "length_limit_share" (captions
    that hit max_new_tokens without ending; None unless `max_new_tokens_hits` is given), "mean_length" and
    "reference_mean_length" (words; the latter None without `references`), "top5_share" (images whose
    caption is one of the 5 most common), "collapsed" (within-caption failure: `collapse_signs`),
    "template_reuse" (few captions or bigrams across the images: TEMPLATE_TOP_SHARE and the distinct-2 floors)}.
    """
    if not captions:
        raise ValueError("no captions to check")
    for name, column in (("references", references), ("max_new_tokens_hits", max_new_tokens_hits)):
        if column is not None and len(column) != len(captions):
            raise ValueError(f"{len(captions)} captions but {len(column)} {name}")
    words = [normalize_text(c).split() for c in captions]
    distinct_1, distinct_2 = _distinct(words, 1), _distinct(words, 2)
    top_share = sum(n for _, n in Counter(map(tuple, words)).most_common(TOP_CAPTIONS)) / len(captions)
    reference_lengths = [len(normalize_text(r).split()) for refs in references or () for r in refs]
    reference_distinct_2 = (
        _distinct([normalize_text(refs[0]).split() for refs in references if refs], 2) if references else None
    )
    floor = (
        TEMPLATE_DISTINCT_2_OF_REFERENCES * reference_distinct_2
        if reference_distinct_2
        else TEMPLATE_DISTINCT_2
    )
    repeated_share = sum(map(_repeats_an_ngram, words)) / len(captions)
    length_limit_share = (
        None if max_new_tokens_hits is None else sum(map(bool, max_new_tokens_hits)) / len(captions)
    )
    mean_length = _mean([len(w) for w in words])
    return {
        "num_captions": len(captions),
        "distinct_1": distinct_1,
        "distinct_2": distinct_2,
        "reference_distinct_2": reference_distinct_2,
        "vocabulary_size": len({w for caption in words for w in caption}),
        "repeated_trigram_share": repeated_share,
        "length_limit_share": length_limit_share,
        "mean_length": mean_length,
        "reference_mean_length": _mean(reference_lengths) if reference_lengths else None,
        "top5_share": top_share,
        "collapsed": bool(collapse_signs(repeated_share, length_limit_share, mean_length)),
        "template_reuse": (top_share > TEMPLATE_TOP_SHARE and len(captions) >= 2 * TOP_CAPTIONS)
        or distinct_2 < floor,
    }


def _distinct(captions: Sequence[Sequence[str]], n: int) -> float:
    """Distinct n-grams over all n-gram occurrences across the captions; 0 when there are none."""
    ngrams = [g for words in captions for g in word_ngrams(words, n)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def _repeats_an_ngram(words: Sequence[str]) -> bool:
    ngrams = word_ngrams(words, REPEAT_N)
    return len(set(ngrams)) < len(ngrams)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
