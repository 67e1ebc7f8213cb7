"""The category reward SLS: 1 when the category a caption names first is the item's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from fashioncap.text import compound_words, normalize_text, plural


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


def sls_reward(completions: Sequence[str], category, category_wordmap, **_) -> list[float]:
    return category_reward(completions, category, category_wordmap)
