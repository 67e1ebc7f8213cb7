"""Caption health on hand-made captions: every number counted by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from fashioncap.metrics.health import (
    COLLAPSE_LENGTH_LIMIT_SHARE,
    COLLAPSE_REPEAT_SHARE,
    caption_health,
    collapse_signs,
)

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
        "template_reuse": False,  # ... but 4 images are too few for the top-5 rule
        "collapsed": True,  # 1 of 4 captions repeats a trigram: above COLLAPSE_REPEAT_SHARE
    }


def test_optional_columns_are_none():
    health = caption_health(CAPTIONS)
    assert health["reference_mean_length"] is None and health["length_limit_share"] is None


def test_a_repeated_bigram_alone_is_not_a_repeat():
    health = caption_health(["a dress with a bow, a bag with a strap", "a dress with a dress with"])
    assert health["repeated_trigram_share"] == 0.5


def test_template_reuse_when_five_captions_take_most_images():
    """12 images: 7 'a red dress' plus 4 others make 11 of 12 for the top 5: template reuse, not a collapse."""
    captions = ["a red dress"] * 7 + [
        f"a {c} skirt with pockets" for c in ("blue", "green", "black", "white", "pink")
    ]
    health = caption_health(captions)
    assert health["top5_share"] == pytest.approx(11 / 12)
    assert health["distinct_2"] > 0.1 and health["template_reuse"] is True and health["collapsed"] is False


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
    assert health["top5_share"] == pytest.approx(5 / 12)
    assert health["collapsed"] is False and health["template_reuse"] is False


def test_collapsed_when_few_bigrams_are_distinct():
    """3 captions of 11 'dress': 30 bigrams, 1 distinct; too few images for the top-5 rule."""
    health = caption_health([" ".join(["dress"] * 11)] * 3)
    assert health["distinct_2"] == pytest.approx(1 / 30)
    assert health["repeated_trigram_share"] == 1.0 and health["collapsed"] and health["template_reuse"]


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


def test_a_small_vocabulary_is_not_template_reuse_when_the_references_share_it():
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
    assert health["distinct_2"] < 0.1 and health["top5_share"] <= 0.5 and health["template_reuse"] is False
    assert health["reference_distinct_2"] == pytest.approx(health["distinct_2"])
    assert caption_health(ours)["template_reuse"] is True  # without references, the absolute floor applies
    assert caption_health(ours)["collapsed"] is False


# --- calibration: the references' own figures, and the runs of issue 24 ------------------------------------------

FACAD_RECORDS = Path(__file__).parent / "data" / "facad_records.jsonl"
ITEMS = ["dress", "tee", "skirt", "coat", "boots", "bag", "sweater", "jeans", "blouse", "sandals"]
COLOURS = ["red", "blue", "green", "black", "white", "grey", "pink", "navy", "tan", "plum"]


def test_the_references_are_far_from_the_collapse_thresholds(synthetic_dir):
    """FACAD's descriptions (the repo's 400-record slice) and the synthetic set's references repeat a trigram in
    at most 0.5% of captions: the thresholds sit well clear of what a human (or a template) writes."""
    facad = [json.loads(line)["description"] for line in FACAD_RECORDS.read_text().splitlines()]
    annotations = json.loads((synthetic_dir / "annotations" / "test.json").read_text())["annotations"]
    for references in (facad, [a["caption"] for a in annotations]):
        health = caption_health(references)
        assert health["repeated_trigram_share"] <= 0.005 < COLLAPSE_REPEAT_SHARE / 10
        assert health["collapsed"] is False


def _issue_run(repeating: int, at_limit: int, total: int = 200) -> tuple[list[str], list[bool]]:
    """`total` captions, the first `repeating` with an attribute phrase twice, `at_limit` cut at the length limit."""
    rng = random.Random(0)
    captions = []
    for i in range(total):
        phrase = f"a pair of {rng.choice(COLOURS)} striped {rng.choice(ITEMS)}"
        captions.append(
            f"{phrase} for the weekend {phrase}" if i < repeating else f"{phrase} for the weekend {i}"
        )
    return captions, [i < at_limit for i in range(total)]


def test_the_issues_three_quarters_run_is_collapsed():
    """85.5% of 200 captions repeat a trigram and 81% run to the length limit: the old flag missed it."""
    captions, hits = _issue_run(repeating=171, at_limit=162)
    health = caption_health(captions, max_new_tokens_hits=hits)
    assert health["repeated_trigram_share"] == pytest.approx(0.855)
    assert health["length_limit_share"] == pytest.approx(0.81)
    assert health["collapsed"] is True
    assert collapse_signs(0.855, 0.81) == [
        "86% repeat a trigram (references: under 1%)",
        "81% run to the length limit",
    ]
    no_repeats, all_cut = _issue_run(repeating=0, at_limit=200)
    assert caption_health(no_repeats, max_new_tokens_hits=all_cut)["collapsed"], "the length limit alone"
    assert caption_health(no_repeats, max_new_tokens_hits=[False] * 200)["collapsed"] is False
    assert COLLAPSE_LENGTH_LIMIT_SHARE < 0.81


def test_a_healthy_run_with_common_templates_is_not_collapsed():
    """The demo's trial 2: no repeats, its five most common captions 59 of 200 (29.5%): healthy, whatever the
    template reuse."""
    common = [f"a {c} dress with short sleeves" for c in COLOURS[:5]]
    captions = [common[i % 5] for i in range(59)] + [
        f"a {COLOURS[i % 10]} {ITEMS[i // 10 % 10]} with pockets {i}" for i in range(141)
    ]
    health = caption_health(captions, max_new_tokens_hits=[False] * 200)
    assert health["top5_share"] == pytest.approx(0.295)
    assert health["repeated_trigram_share"] == 0.0 and health["collapsed"] is False
