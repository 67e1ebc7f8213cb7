"""Reward throughput (captions/s) for ALS + SLS on FACAD sample captions: cold, repeated, warm.

Cold: distinct captions, attribute cache cleared (each is POS-tagged by spaCy). Repeated: what a REINFORCE step
scores, 4 samples per image, 3 of them distinct (a trained policy often samples the same caption twice), cache
cleared first, so the gain is de-duplication within the batch. Warm: the same captions again, all cached. spaCy is loaded
before timing (its load is reported apart): training pays it once.

    python -m bench.bench_rewards     # JSON on stdout
"""

from __future__ import annotations

import json
import time

from bench.facad_records import facad_records

SAMPLES_PER_IMAGE = 4


def facad_inputs(n: int) -> tuple[list[str], list[list[str]], list[int], dict[int, str]]:
    """(captions, reference attributes, categories, wordmap): the title's last word is the category."""
    records = facad_records(n)
    names = sorted({r["title"].split()[-1] for r in records})
    category = {name: i for i, name in enumerate(names, start=1)}
    return (
        [r["description"] for r in records],
        [r["title"].split()[:-1] for r in records],
        [category[r["title"].split()[-1]] for r in records],
        {i: name for name, i in category.items()},
    )


def _score(completions, attributes, categories, wordmap) -> dict:
    import warnings

    from fashioncap.rewards import als_reward, sls_reward

    start = time.perf_counter()
    with warnings.catch_warnings():  # one-word titles have no attributes: ALS 0, as defined; not news here
        warnings.simplefilter("ignore")
        als = als_reward(completions, attributes)
    sls = sls_reward(completions, categories, wordmap)
    seconds = time.perf_counter() - start
    return {
        "captions": len(completions),
        "distinct": len(set(completions)),
        "seconds": round(seconds, 3),
        "captions_per_second": round(len(completions) / seconds, 1),
        "mean_als": round(sum(als) / len(als), 4),
        "mean_sls": round(sum(sls) / len(sls), 4),
    }


def run(images: int = 500) -> dict:
    from fashioncap.rewards import attributes as rewards

    start = time.perf_counter()
    rewards._tagger()
    load_s = time.perf_counter() - start
    captions, attributes, categories, wordmap = facad_inputs(SAMPLES_PER_IMAGE * images)
    rewards._attribute_cache.clear()
    cold = _score(captions, attributes, categories, wordmap)

    # 4 samples per image: the caption twice and two shortened variants (drop the last word, then the first).
    samples, sample_attrs, sample_cats = [], [], []
    for caption, attrs, cat in zip(captions[:images], attributes[:images], categories[:images], strict=True):
        words = caption.split()
        for variant in (caption, caption, " ".join(words[:-1]), " ".join(words[1:])):
            samples.append(variant)
            sample_attrs.append(attrs)
            sample_cats.append(cat)
    rewards._attribute_cache.clear()
    repeated = _score(samples, sample_attrs, sample_cats, wordmap)
    warm = _score(samples, sample_attrs, sample_cats, wordmap)
    return {
        "spacy_load_s": round(load_s, 2),
        "cold": cold,
        "repeated": repeated,
        "warm": warm,
        "repeated_over_cold": round(repeated["captions_per_second"] / cold["captions_per_second"], 2),
        "warm_over_cold": round(warm["captions_per_second"] / cold["captions_per_second"], 2),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
