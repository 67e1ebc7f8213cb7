"""The repetition reward: how little of a caption repeats an earlier phrase."""

from __future__ import annotations

from collections.abc import Sequence

from fashioncap.text import normalize_text, word_ngrams

REPETITION_N = 3  # as caption health counts repeats: a repeated bigram ("of the") can be chance


def repetition_reward(completions: Sequence[str], **_) -> list[float]:
    """1 minus the share of the caption's word trigrams that repeat an earlier one, in [0, 1]: 1 for a caption
    that repeats no phrase (or has under three words), 1/3 for "red red red red red"."""
    scores = []
    for completion in completions:
        words = normalize_text(completion).split()
        ngrams = word_ngrams(words, REPETITION_N)
        scores.append(len(set(ngrams)) / len(ngrams) if ngrams else 1.0)
    return scores
