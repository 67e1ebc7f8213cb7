"""CIDEr-D in process: pycocoevalcap's Cider (CIDEr-D) to 1e-9 on the same references and tokens, fixed document
frequencies, the reference cache, pickling."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest
from pycocoevalcap.cider.cider import Cider

from bench.bench_metrics import perturb
from fashioncap.metrics.cider_d import CiderD
from fashioncap.text import normalize_text

RECORDS = Path(__file__).resolve().parent / "data/facad_records.jsonl"


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[list[str]]]:
    """(candidates, references) for 300 FACAD sample images: 1-3 references each (the image's description plus
    others), candidates perturbed from the first reference, plus an empty, a one-word and an unseen caption."""
    records = [json.loads(line) for line in RECORDS.read_text(encoding="utf-8").splitlines()]
    descriptions = [r["description"] for r in records]
    rng = random.Random(0)
    vocabulary = sorted({w for d in descriptions for w in d.split()})
    references = [[d, *rng.sample(descriptions, rng.randrange(3))] for d in descriptions[:300]]
    candidates = [perturb(refs[0], rng, vocabulary) for refs in references]
    candidates[:4] = ["", "Dress.", "zyx qwv zyx qwv", references[3][0].upper()]
    return candidates, references


def stock_scores(candidates: list[str], references: list[list[str]]) -> list[float]:
    """pycocoevalcap's per-image CIDEr-D, document frequencies from these references, tokens pre-normalised."""
    gts = {i: [normalize_text(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [normalize_text(c)] for i, c in enumerate(candidates)}
    return list(Cider().compute_score(gts, res)[1])


def test_equals_pycocoevalcap(corpus):
    candidates, references = corpus
    scores = CiderD(references).score(candidates, references)
    assert scores == pytest.approx(stock_scores(candidates, references), abs=1e-9, rel=0)
    assert scores[0] == 0.0 and scores[2] == 0.0 and scores[3] > 3
    assert 0 < sum(scores) / len(scores) < 10


def test_hand_computed():
    """Two images: every n-gram of 'red dress' is in one document of two (IDF log 2), so a candidate equal to
    the reference has cosine 1 for unigrams and bigrams, and 0 for the 3- and 4-grams it lacks: 10 * 2 / 4.
    'dress' is in both documents (IDF 0): 'blue dress' shares no weighted n-gram with 'red dress'."""
    cider = CiderD([["red dress"], ["blue dress"]])
    assert cider.score(["Red dress!", "blue dress"], [["red dress"], ["red dress"]]) == pytest.approx(
        [5.0, 0.0]
    )


def test_document_frequencies_are_fixed_by_the_corpus(corpus):
    """A caption's score does not depend on the other captions of its batch, unlike pycocoevalcap's."""
    candidates, references = corpus
    cider = CiderD(references)
    batch = cider.score(candidates[:50], references[:50])
    assert [cider.score([c], [r])[0] for c, r in zip(candidates[:50], references[:50], strict=True)] == batch
    assert batch != pytest.approx(stock_scores(candidates[:50], references[:50]), abs=1e-6)


def test_reference_cache_is_bounded_and_leaves_scores_alone(corpus):
    candidates, references = corpus
    full = CiderD(references).score(candidates, references)
    small = CiderD(references, cache_size=3)
    assert small.score(candidates, references) == full
    assert small.score(candidates[::-1], references[::-1]) == full[::-1]
    assert len(small._reference_cache) == 3


def test_picklable_without_its_cache(corpus):
    candidates, references = corpus
    cider = CiderD(references)
    empty = len(pickle.dumps(cider))
    scores = cider.score(candidates, references)
    restored = pickle.loads(pickle.dumps(cider))
    assert len(pickle.dumps(cider)) == empty
    assert restored.score(candidates, references) == scores


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one image"):
        CiderD([])
    cider = CiderD([["a red dress"], ["boots"]])
    with pytest.raises(ValueError, match="2 candidates but 1 reference lists"):
        cider.score(["a", "b"], [["a"]])
    for references in ([], "a red dress"):
        with pytest.raises(ValueError, match="non-empty list of references"):
            cider.score(["a dress"], [references])
