"""What FACAD descriptions leave out (`fashioncap data gaps RECORDS`): the figures the synthetic set v4 copies.

FACAD's category id and attribute list come from the catalogue; the description is ad copy. It names the
product word of the item's title in about four descriptions of five, and otherwise says a hypernym or near
synonym ("top" for a blouse, "pullover" for a sweater, "parka" for a jacket) or no product word at all; it
rarely names the colour; and half the descriptions spend words on feel, occasion or fit. Those gaps are what a
reward computed from the catalogue can teach and maximum likelihood on the descriptions cannot.

Measured on records with `title` and `description` (the FACAD text sample's format); the product word is the
title's last word. Word lists are small and explicit, so the figures are reproducible and easy to audit: they
count words, not meanings ("soft" counts as non-visual content even where it describes a look).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from fashioncap.data.coco import DataError
from fashioncap.data.facad import Skip, read_meta
from fashioncap.text import normalize_text

COLOUR_WORDS = frozenset(
    "black white red blue green pink yellow grey gray navy brown beige ivory cream tan gold silver purple "
    "orange burgundy olive khaki camel".split()
)
PATTERN_WORDS = frozenset(
    "stripe striped floral print printed plaid dot dotted polka check checked gingham leopard camo paisley "
    "pattern patterned tartan houndstooth".split()
)
# Cut and silhouette words: what the synthetic set's two-way shape attribute stands for.
CUT_WORDS = frozenset(
    "sleeve sleeveless neck neckline crewneck turtleneck leg ankle knee mini midi maxi crop cropped wide "
    "skinny slim straight brim hem fringe fringed strap strappy heel heeled flat platform silhouette".split()
)
# Feel, occasion, season and fit advice: content an image cannot show.
NON_VISUAL_WORDS = frozenset(
    "soft comfort comfortable feel perfect versatile day night weekend office occasion season summer fall "
    "winter spring everyday easy effortless wear party work travel vacation".split()
)
MIN_PRODUCT_COUNT = 3  # a title word is a product word of the sample when at least this many titles end in it
MIN_PRODUCT_LENGTH = 3  # "slip-on" titles end in "on", which every description says as a preposition


def singular(word: str) -> str:
    """'boots' -> 'boot', 'dress' stays: enough to match title and description words."""
    return word[:-1] if word.endswith("s") and not word.endswith(("ss", "us")) else word


def _share(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 3) if flags else 0.0


def read_records(path: str | Path) -> list[Mapping]:
    """Records with a `title` and a `description`, from the FACAD meta file or the text sample (JSON list or
    JSON lines); a record that is unreadable or lacks either field is an error naming its position."""
    records = []
    for label, record in read_meta(path):
        if isinstance(record, Skip):
            raise DataError(path, label, None, record.reason)
        for field in ("title", "description"):
            if not isinstance(record.get(field), str) or not record[field].strip():
                raise DataError(path, label, field, "missing or empty")
        records.append(record)
    if not records:
        raise DataError(path, None, None, "no records")
    return records


def measure_gaps(records: Sequence[Mapping], top: int = 12) -> dict:
    """The figures of docs/data.md: how often a description names its product word, colour, pattern and cut,
    what stands in for the product word when it is missing, and how long descriptions are."""
    rows = []
    for record in records:
        title = [singular(w) for w in normalize_text(record["title"]).split()]
        words = [singular(w) for w in normalize_text(record["description"]).split()]
        rows.append((title, words))
    products = Counter(title[-1] for title, _ in rows if title)
    vocabulary = {
        word
        for word, count in products.items()
        if count >= MIN_PRODUCT_COUNT and len(word) >= MIN_PRODUCT_LENGTH
    }

    per_product: dict[str, dict] = {}
    stand_ins: Counter = Counter()
    for title, words in rows:
        product = title[-1]
        entry = per_product.setdefault(product, {"records": 0, "named": 0, "stand_ins": Counter()})
        entry["records"] += 1
        if product in words:
            entry["named"] += 1
            continue
        # the first product word of another item that is not a word of this title ("tie" in "tie front top")
        other = next((w for w in words if w in vocabulary and w not in title), None)
        if other is not None:
            entry["stand_ins"][other] += 1
            stand_ins[other] += 1

    missing = sum(e["records"] - e["named"] for e in per_product.values())
    lengths = sorted(len(words) for _, words in rows)
    decile = max(1, len(lengths) // 10)
    return {
        "records": len(rows),
        "names_product_word": _share(title[-1] in words for title, words in rows),
        "misses_with_stand_in": round(sum(stand_ins.values()) / missing, 3) if missing else 0.0,
        "stand_ins": dict(stand_ins.most_common(top)),
        "by_product": {
            product: {
                "records": entry["records"],
                "names_product_word": round(entry["named"] / entry["records"], 3),
                "stand_ins": dict(entry["stand_ins"].most_common(3)),
            }
            for product, entry in sorted(per_product.items(), key=lambda kv: -kv[1]["records"])[:top]
        },
        "words": {
            "mean": round(statistics.mean(lengths), 1),
            "median": statistics.median(lengths),
            "p10": lengths[decile - 1],
            "p90": lengths[-decile],
        },
        "names_colour": _share(any(w in COLOUR_WORDS for w in words) for _, words in rows),
        "names_pattern": _share(any(w in PATTERN_WORDS for w in words) for _, words in rows),
        "names_cut": _share(any(w in CUT_WORDS for w in words) for _, words in rows),
        "non_visual": _share(any(w in NON_VISUAL_WORDS for w in words) for _, words in rows),
    }
