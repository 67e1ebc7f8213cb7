"""Text normalisation and plural forms: one definition for the data builders, the rewards and the metrics.

Captions, reference attributes and category names all pass through `normalize_text` before they are compared,
so "One-Piece", "one - piece" (how BLIP's WordPiece tokenizer decodes it) and "one piece" are the same words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_NON_WORD = re.compile(r"[\W_]+")
_SPACED_HYPHEN = re.compile(r"(?<=\w) - (?=\w)")
_COMPOUND = re.compile(r"[^\W_]+(?:-[^\W_]+)*")


def normalize_text(text: str) -> str:
    """Lower case, punctuation, hyphens and underscores to spaces, single spaces: 'T-Shirt!' -> 't shirt'."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def caption_vocabulary(captions: Iterable[str]) -> list[str]:
    """Sorted unique words: deterministic across processes, unlike WordPiece training (a tiny model's vocabulary)."""
    return sorted({w for c in captions for w in normalize_text(c).split()})


def compound_words(text: str) -> list[tuple[str, ...]]:
    """`normalize_text`'s words grouped by hyphenated compound: 'Boot-cut jeans' -> [('boot', 'cut'),
    ('jeans',)] (a compound spelt as BLIP decodes it, 'boot - cut', too)."""
    return [tuple(m.group().split("-")) for m in _COMPOUND.finditer(join_spaced_hyphens(text.lower()))]


def join_spaced_hyphens(text: str) -> str:
    """Undo what BLIP's WordPiece decoding does to a hyphenated word: 'one - piece' -> 'one-piece'."""
    return _SPACED_HYPHEN.sub("-", text)


def decode_captions(processor, sequences) -> list[str]:
    """Captions from token ids as a person reads them: special tokens dropped, hyphens rejoined, no edge spaces.
    The one decoding for rewards, eval and `caption`, so they all score and show the same text."""
    return [
        join_spaced_hyphens(c).strip() for c in processor.batch_decode(sequences, skip_special_tokens=True)
    ]


def word_ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of a word list, in order: what CIDEr-D, the repetition reward and caption health count."""
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def plural(form: str) -> str:
    """The plural of a (normalised) name, inflecting its last word: 'boot' -> 'boots', 'dress' -> 'dresses',
    'hoody' -> 'hoodies'. A last word already ending in a single 's' is taken as plural: 'jeans' stays 'jeans'."""
    *head, last = form.split()
    if last.endswith(("ss", "sh", "ch", "x", "z")):
        last += "es"
    elif last.endswith("s"):
        pass
    elif len(last) > 1 and last.endswith("y") and last[-2] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join([*head, last])
