"""Caption metrics: the known maxima, agreement with pycocoevalcap's own scorers, SPICE's null path, ALS/SLS =
the rewards, and the evaluate module. One METEOR JVM serves the whole session (module-scoped results)."""

from __future__ import annotations

import json
import random
import socket
import threading
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from bench.bench_metrics import perturb
from fashioncap import rewards
from fashioncap.metrics import (
    EVALUATE_MODULE,
    METRIC_NAMES,
    coco_caption,
    compute_caption_metrics,
    ptb_tokenize,
)

RECORDS = Path(__file__).resolve().parent / "data/facad_records.jsonl"
N_IMAGES = 120


@pytest.fixture(scope="module")
def facad() -> list[dict]:
    """FACAD records with distinct captions of 4+ words (a missing file fails the tests: it ships with the repo)."""
    records = [json.loads(line) for line in RECORDS.read_text(encoding="utf-8").splitlines()]
    seen, chosen = set(), []
    for r in records:
        if len(r["description"].split()) >= 4 and r["description"] not in seen:
            seen.add(r["description"])
            chosen.append(r)
    return chosen[:N_IMAGES]


@pytest.fixture(scope="module")
def references(facad) -> dict[int, list[str]]:
    return {r["id"]: [r["description"]] for r in facad}


@pytest.fixture(scope="module")
def predictions(facad) -> dict[int, str]:
    rng = random.Random(0)
    vocabulary = sorted({w for r in facad for w in r["description"].split()})
    preds = {r["id"]: perturb(r["description"], rng, vocabulary) for r in facad}
    first, second, third = list(preds)[:3]
    preds[first], preds[second], preds[third] = "", "a\nred\r\ndress", "T-Shirt ||| (cotton), 5'2\" !"
    return preds


@pytest.fixture(scope="module")
def attributes(facad) -> dict[int, list[str] | None]:
    """Title words as attributes for every other image; the rest fall back to the reference's NOUN/ADJ."""
    return {r["id"]: (r["title"].split() if i % 2 == 0 else None) for i, r in enumerate(facad)}


@pytest.fixture(scope="module")
def categories(facad) -> tuple[dict[int, int], dict[str, str]]:
    """The title's last word as the category (the sample's README suggests it), and its wordmap."""
    names = sorted({r["title"].split()[-1] for r in facad})
    wordmap = {str(i): name for i, name in enumerate(names, start=1)}
    ids = {name: i for i, name in enumerate(names, start=1)}
    return {r["id"]: ids[r["title"].split()[-1]] for r in facad}, wordmap


@pytest.fixture(scope="module")
def identical(references) -> dict:
    return compute_caption_metrics({k: refs[0] for k, refs in references.items()}, references)


@pytest.fixture(scope="module")
def scored(predictions, references, attributes, categories) -> dict:
    image_categories, wordmap = categories
    return compute_caption_metrics(predictions, references, attributes, image_categories, wordmap)


@pytest.fixture(scope="module")
def stock_tokenized(predictions, references) -> tuple[dict, dict]:
    """pycocoevalcap's own tokenization, as COCOEvalCap.evaluate() does it (line breaks removed first: see
    test_line_breaks_stay_aligned for what the stock tokenizer does with them)."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in refs] for k, refs in references.items()})
    res = tokenizer.tokenize({k: [{"caption": " ".join(predictions[k].split())}] for k in references})
    return gts, res


def test_identical_captions_score_the_maxima(identical):
    for n in range(1, 5):
        assert identical[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-9)  # BleuScorer's smoothing epsilons
    assert identical["ROUGE-L"] == 1.0
    assert identical["METEOR"] == 1.0  # METEOR 1.5 drops the fragmentation penalty for an exact match
    # CIDEr-D: every caption has 4+ words and n-grams rarer than all images (positive IDF), so cos = 1 per order
    assert identical["CIDEr"] == pytest.approx(10.0)
    assert identical["num_images"] == N_IMAGES


def test_cider_of_identical_captions_needs_a_corpus(references):
    """CIDEr's IDF is log(N / df): one image alone has IDF 0 everywhere, and a 3-word caption has no 4-grams."""
    first = next(iter(references))
    alone = compute_caption_metrics({first: references[first][0]}, {first: references[first]})
    assert alone["CIDEr"] == 0.0
    short = {k: " ".join(refs[0].split()[:3]) for k, refs in references.items()}
    assert compute_caption_metrics(short, {k: [c] for k, c in short.items()})["CIDEr"] == pytest.approx(7.5)


def test_schema(scored, identical):
    assert list(scored) == [*METRIC_NAMES, "ALS", "SLS", "num_images", "unavailable", "ci95"]
    assert list(identical) == [
        *METRIC_NAMES,
        "num_images",
        "unavailable",
        "ci95",
    ]  # no attributes/categories given
    assert all(isinstance(scored[m], float) for m in METRIC_NAMES if m != "SPICE")
    json.dumps(scored, allow_nan=False)


def test_matches_pycocoevalcap_scorers(scored, stock_tokenized):
    gts, res = stock_tokenized
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [scored[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu, rel=1e-12)
    assert scored["ROUGE-L"] == pytest.approx(Rouge().compute_score(gts, res)[0], rel=1e-12)
    assert scored["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-12)
    meteor = Meteor()  # a second, independent JVM: the reference for our shared session
    try:
        assert scored["METEOR"] == pytest.approx(meteor.compute_score(gts, res)[0], rel=1e-12)
    finally:
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    assert 0 < scored["BLEU-4"] < scored["BLEU-1"] < 1 and 0 < scored["CIDEr"] < 10


def test_ptb_tokenize_matches_stock_tokenizer(references, predictions):
    captions = {k: [*refs, " ".join(predictions[k].split())] for k, refs in references.items()}
    stock = PTBTokenizer().tokenize({k: [{"caption": c} for c in caps] for k, caps in captions.items()})
    assert ptb_tokenize(captions) == stock
    assert ptb_tokenize({1: ["T-Shirt ||| (cotton), 5'2\" !"]}) == {
        1: ["t-shirt | | | -lrb- cotton -rrb- 5 2"]
    }


def test_line_breaks_stay_aligned():
    captions = {1: ["a red\rdress."], 2: ["blue\u2028shirt"], 3: ["green\nskirt"], 4: [""]}
    assert ptb_tokenize(captions) == {1: ["a red dress"], 2: ["blue shirt"], 3: ["green skirt"], 4: [""]}
    # the stock tokenizer shifts every later caption onto the wrong image
    assert PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})[2] == [
        "dress"
    ]


def test_empty_and_odd_predictions_score(scored, predictions, references):
    """An empty caption scores 0 without hanging METEOR's JVM; line breaks and '|||' do not break its protocol."""
    first = next(iter(references))
    one = compute_caption_metrics({first: ""}, {first: references[first]})
    assert one["METEOR"] == 0.0 and one["ROUGE-L"] == 0.0 and one["BLEU-1"] < 1e-9
    assert all(0 <= scored[m] for m in METRIC_NAMES if m != "SPICE")


def test_one_meteor_jvm_per_process_thread_safe(scored, stock_tokenized):
    session = coco_caption._METEOR
    jvm = session._meteor
    assert jvm is not None and jvm.meteor_p.poll() is None
    gts, res = stock_tokenized
    results = [None] * 4

    def score(i):
        results[i] = session.compute_score(gts, res)

    threads = [threading.Thread(target=score, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [scored["METEOR"]] * 4
    assert session._meteor is jvm


def test_spice_unavailable_is_null_with_reason(identical, scored, tmp_path, monkeypatch):
    for result in (identical, scored):
        assert result["SPICE"] is None
        assert "stanford-corenlp-3.6.0" in result["unavailable"]["SPICE"]
    monkeypatch.setenv(coco_caption.SPICE_LIB_ENV, str(tmp_path))
    monkeypatch.setattr(coco_caption, "_SYSTEM_JAVA_DIR", tmp_path / "none")
    with pytest.raises(coco_caption.MetricUnavailable) as err:
        coco_caption.spice_command()
    message = str(err.value)
    assert "stanford-corenlp-3.6.0.jar" in message and "stanford-corenlp-3.6.0-models.jar" in message
    assert str(tmp_path) in message and coco_caption.SPICE_LIB_ENV in message
    if coco_caption._java_major() >= 15:
        assert "librhino-java" in message


def test_spice_command_for_java_17(tmp_path, monkeypatch):
    for jar in (*coco_caption.CORENLP_JARS, "js.jar"):
        (tmp_path / jar).touch()
    monkeypatch.setenv(coco_caption.SPICE_LIB_ENV, str(tmp_path))
    monkeypatch.setattr(coco_caption, "_java_major", lambda: 17)
    cmd = coco_caption.spice_command()
    assert cmd[-1] == "edu.anu.spice.SpiceScorer"
    assert "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED" in cmd
    classpath = cmd[cmd.index("-cp") + 1].split(":")
    assert (
        classpath[0].endswith("spice-1.0.jar")
        and f"{tmp_path}/*" in classpath
        and classpath[-1] == f"{tmp_path}/js.jar"
    )


def test_als_sls_are_the_rewards(scored, predictions, references, attributes, categories):
    ids = list(references)
    ref_attrs = rewards.reference_attributes([attributes[k] for k in ids], [references[k][0] for k in ids])
    als = rewards.attribute_reward([predictions[k] for k in ids], ref_attrs)
    image_categories, wordmap = categories
    sls = rewards.category_reward([predictions[k] for k in ids], [image_categories[k] for k in ids], wordmap)
    assert scored["ALS"] == pytest.approx(sum(als) / len(als))
    assert scored["SLS"] == pytest.approx(sum(sls) / len(sls))
    assert 0 < scored["ALS"] < 1 and 0 < scored["SLS"] < 1


def test_sls_without_wordmap_is_unavailable(references):
    first = next(iter(references))
    result = compute_caption_metrics({first: "a dress"}, {first: references[first]}, categories={first: 1})
    assert result["SLS"] is None and "no categories.json" in result["unavailable"]["SLS"]


def test_input_errors_name_the_images(references):
    preds = {k: refs[0] for k, refs in references.items()}
    missing = list(references)[:7]
    for k in missing:
        del preds[k]
    preds["ghost"] = "a dress"
    with pytest.raises(ValueError) as err:
        compute_caption_metrics(preds, references)
    assert (
        "'ghost'" in str(err.value) and "7 image(s)" in str(err.value) and repr(missing[0]) in str(err.value)
    )
    with pytest.raises(ValueError, match="nothing to score"):
        compute_caption_metrics({}, {})


def test_evaluate_module_offline_matches_function_api(
    scored, predictions, references, attributes, categories, tmp_path, monkeypatch
):
    import evaluate

    def no_network(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    metric = evaluate.load(str(EVALUATE_MODULE), cache_dir=str(tmp_path / "cache"))
    ids = list(references)
    image_categories, wordmap = categories
    result = metric.compute(
        predictions=[predictions[k] for k in ids],
        references=[references[k] for k in ids],
        attributes=[attributes[k] for k in ids],
        categories=[image_categories[k] for k in ids],
        category_wordmap=wordmap,
    )
    assert result == scored


# --- per-image scores, bootstrap intervals, paired comparison ----------------------------------------------


@pytest.fixture(scope="module")
def scored_per_image(predictions, references, attributes, categories) -> dict:
    image_categories, wordmap = categories
    return compute_caption_metrics(
        predictions, references, attributes, image_categories, wordmap, bootstrap=0, per_image=True
    )


def test_ci95_brackets_every_metric_that_ran(scored, scored_per_image, references):
    from fashioncap.metrics.bootstrap import bootstrap_ci

    assert list(scored["ci95"]) == ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "ALS", "SLS"]  # SPICE did not run
    for name, (lo, hi) in scored["ci95"].items():
        assert lo < scored[name] < hi, name  # an interval of the very figure it stands beside
        values = scored_per_image["per_image"][name]
        resampled = bootstrap_ci(
            [values[k] for k in references], coco_caption.STATISTICS[name], n=1000, seed=0
        )
        assert scored["ci95"][name] == resampled, name
    assert scored["ci95"]["CIDEr"][1] - scored["ci95"]["CIDEr"][0] > 0.1  # 120 images: wide, not degenerate


def test_per_image_only_when_asked_and_same_scores(scored, scored_per_image):
    assert "per_image" not in scored and "ci95" not in scored_per_image
    assert {k: v for k, v in scored.items() if k != "ci95"} == {
        k: v for k, v in scored_per_image.items() if k != "per_image"
    }
    json.dumps(scored_per_image, allow_nan=False)


def test_per_image_scores_make_the_corpus_values(scored, scored_per_image, stock_tokenized, references):
    import numpy as np

    from fashioncap.metrics.bootstrap import corpus_bleu, corpus_meteor

    per_image = scored_per_image["per_image"]
    assert list(per_image) == ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "ALS", "SLS"]
    assert all(list(values) == list(references) for values in per_image.values())
    gts, res = stock_tokenized
    stock_bleu4 = Bleu(4).compute_score(gts, res, verbose=0)[0][3]
    bleu_totals = [sum(column) for column in zip(*per_image["BLEU-4"].values(), strict=True)]
    assert corpus_bleu(np.array(bleu_totals, dtype=float), N_IMAGES) == pytest.approx(
        stock_bleu4, abs=1e-9, rel=0
    )
    stock_cider = Cider().compute_score(gts, res)[1]
    assert list(per_image["CIDEr"].values()) == pytest.approx(list(stock_cider), rel=1e-12)
    for name in ("ROUGE-L", "CIDEr", "ALS", "SLS"):
        assert sum(per_image[name].values()) / N_IMAGES == pytest.approx(scored[name], rel=1e-12), name
    meteor_totals = np.array(list(per_image["METEOR"].values())).sum(axis=0)
    assert corpus_meteor(meteor_totals, N_IMAGES) == pytest.approx(scored["METEOR"], abs=1e-12, rel=0)


def test_meteor_statistics_make_its_corpus_and_segment_scores(references):
    """METEOR's EVAL counts no chunk for a segment that matches its reference exactly: half the captions do."""
    import numpy as np

    from fashioncap.metrics.bootstrap import corpus_meteor

    ids = list(references)[:40]
    gts = {k: references[k][0].lower().split() for k in ids}
    gts = {k: [" ".join(words)] for k, words in gts.items()}
    res = {k: [gts[k][0] if i % 2 else " ".join(gts[k][0].split()[::-1])] for i, k in enumerate(ids)}
    score, stats = coco_caption._METEOR.compute_scores(gts, res)
    stock = Meteor()
    try:
        stock_score, stock_segments = stock.compute_score(gts, res)
    finally:
        stock.meteor_p.kill()
        stock.meteor_p.wait()
    matrix = np.array([stats[k] for k in ids])
    assert score == stock_score and corpus_meteor(matrix.sum(axis=0), len(ids)) == pytest.approx(
        score, abs=1e-12
    )
    assert list(corpus_meteor(matrix, 1)) == pytest.approx(stock_segments, abs=1e-12)


def test_compare_runs_pairs_the_images(scored_per_image, references):
    exact = compute_caption_metrics(
        {k: refs[0] for k, refs in references.items()}, references, bootstrap=0, per_image=True
    )
    compared = coco_caption.compare_runs(exact["per_image"], scored_per_image["per_image"])
    assert list(compared) == ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]  # the metrics both runs scored
    for name, result in compared.items():  # the difference of the two runs' own scores, inside its interval
        assert 0 < result["ci95"][0] < result["delta"] < result["ci95"][1], name
        assert result["delta"] == pytest.approx(exact[name] - scored_per_image[name], abs=1e-12), name
    fewer = {name: dict(list(values.items())[1:]) for name, values in scored_per_image["per_image"].items()}
    with pytest.raises(ValueError, match=f"only run a scored 1 image\\(s\\): {next(iter(references))!r}"):
        coco_caption.compare_runs(exact["per_image"], fewer)
