"""fashioncap.text: the one normaliser and plural rule that builders, rewards and metrics share."""

from __future__ import annotations

import pytest

from fashioncap.text import compound_words, normalize_text, plural


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DETAILS & CARE\nA Soft, Easy-Fit Tee!", "details care a soft easy fit tee"),
        ("T-Shirt!", "t shirt"),
        ("one - piece", "one piece"),  # how BLIP's WordPiece tokenizer decodes "one-piece"
        ("snake_print  Boot\t", "snake print boot"),
        ("5'2\" (cotton)", "5 2 cotton"),
        ("", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("boot", "boots"),
        ("jeans", "jeans"),  # already plural: unchanged
        ("dress", "dresses"),
        ("hoody", "hoodies"),
        ("tray", "trays"),
        ("t shirt", "t shirts"),  # only the last word is inflected
        ("sweater dress", "sweater dresses"),
        ("box", "boxes"),
    ],
)
def test_plural(name, expected):
    assert plural(name) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Boot-cut jeans, a T - Shirt dress!",
        "a one-piece swimsuit",
        "snake_print  knee-high-boots",
        "",
        "-a- -",
    ],
)
def test_compound_words_group_normalize_texts_words_by_hyphenated_compound(text):
    groups = compound_words(text)
    assert [w for group in groups for w in group] == normalize_text(text).split()
    assert compound_words("Boot-cut jeans, a T - Shirt dress") == [
        ("boot", "cut"), ("jeans",), ("a",), ("t", "shirt"), ("dress",)
    ]  # fmt: skip
