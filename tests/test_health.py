"""Caption health on hand-made captions: every number counted by hand."""

from __future__ import annotations

import pytest

from fashioncap.metrics.health import caption_health

CAPTIONS = ["A red dress.", "a red dress", "blue jeans", "blue boots and blue boots and laces"]
REFERENCES = [["a red silk dress"], ["red dress"], ["blue jeans"], ["brown boots", "laces"]]


def test_hand_counted():
    """Words: 3 + 3 + 2 + 7 = 15, 8 distinct; bigrams: 2 + 2 + 1 + 6 = 11, 7 distinct ('blue boots' and
    'boots and' twice in the last caption, 'a red' and 'red dress' in two captions); the last caption repeats
    the trigram 'blue boots and'. References: 4 + 2 + 2 + 2 + 1 = 11 words in 5 captions."""
    health = caption_health(CAPTIONS, REFERENCES, max_new_tokens_hits=[False, False, False, True])
    assert health == {
        "num_captions": 4,
        "distinct_1": pytest.approx(8 / 15),
        "distinct_2": pytest.approx(7 / 11),
        "reference_distinct_2": 1.0,  # first references: 3 + 1 + 1 + 1 bigrams, all distinct
        "vocabulary_size": 8,
        "repeated_trigram_share": 0.25,
        "length_limit_share": 0.25,
        "mean_length": 3.75,
        "reference_mean_length": 2.2,
        "top5_share": 1.0,  # 3 distinct captions (after normalisation) take all 4 images ...
        "collapsed": False,  # ... but 4 images are too few for the top-5 rule
    }


def test_optional_columns_are_none():
    health = caption_health(CAPTIONS)
    assert health["reference_mean_length"] is None and health["length_limit_share"] is None


def test_a_repeated_bigram_alone_is_not_a_repeat():
    health = caption_health(["a dress with a bow, a bag with a strap", "a dress with a dress with"])
    assert health["repeated_trigram_share"] == 0.5


def test_collapsed_when_five_captions_take_most_images():
    """12 images: 7 'a red dress' plus 4 others make 11 of 12 for the top 5."""
    captions = ["a red dress"] * 7 + [
        f"a {c} skirt with pockets" for c in ("blue", "green", "black", "white", "pink")
    ]
    health = caption_health(captions)
    assert health["top5_share"] == pytest.approx(11 / 12)
    assert health["distinct_2"] > 0.1 and health["collapsed"] is True


def test_twelve_distinct_captions_are_not_collapsed():
    colours = (
        "red",
        "blue",
        "green",
        "black",
        "white",
        "pink",
        "grey",
        "tan",
        "navy",
        "teal",
        "gold",
        "plum",
    )
    health = caption_health([f"a {c} dress" for c in colours])
    assert health["top5_share"] == pytest.approx(5 / 12) and health["collapsed"] is False


def test_collapsed_when_few_bigrams_are_distinct():
    """3 captions of 11 'dress': 30 bigrams, 1 distinct; too few images for the top-5 rule."""
    health = caption_health([" ".join(["dress"] * 11)] * 3)
    assert health["distinct_2"] == pytest.approx(1 / 30)
    assert health["repeated_trigram_share"] == 1.0 and health["collapsed"] is True


def test_empty_captions():
    health = caption_health(["", "..."], [["a dress"], ["boots"]])
    assert health["distinct_1"] == health["distinct_2"] == 0.0
    assert health["mean_length"] == 0.0 and health["reference_mean_length"] == 1.5
    assert health["collapsed"] is True


def test_bad_inputs():
    with pytest.raises(ValueError, match="no captions"):
        caption_health([])
    with pytest.raises(ValueError, match="2 captions but 1 references"):
        caption_health(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="max_new_tokens_hits"):
        caption_health(["a", "b"], max_new_tokens_hits=[True])


def test_a_small_vocabulary_is_not_a_collapse_when_the_references_share_it():
    """distinct-2 is judged against the references' (one per image): a templated set is low by nature."""
    tail = "with a round neck and long sleeves in a soft cotton fabric made for everyday wear at work and at home"

    def captions(colours):
        return [f"a {c} {item} {tail}" for c in colours for item in ("dress", "tee", "coat", "skirt")]

    ours = captions(["red", "blue", "green", "black", "white", "grey", "pink", "brown", "navy", "beige"])
    references = [
        [c]
        for c in captions(["teal", "gold", "rust", "plum", "sand", "mint", "wine", "jade", "ruby", "onyx"])
    ]
    health = caption_health(ours, references)
    assert health["distinct_2"] < 0.1 and health["top5_share"] <= 0.5 and health["collapsed"] is False
    assert health["reference_distinct_2"] == pytest.approx(health["distinct_2"])
    assert caption_health(ours).get("collapsed") is True  # without references, the absolute floor applies
