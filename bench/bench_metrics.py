"""Benchmark: time to score 2000 captions with every metric, cold and warm.

Cold is the first `compute_caption_metrics` call in a fresh process (PTB tokenizer JVM, METEOR's JVM start and
paraphrase load, spaCy load): what `fashioncap score` pays once. Warm is a second call in the same process with
new predictions against the same references: what each evaluation during training pays. Predictions are FACAD
sample captions with one word dropped, swapped or replaced, or cut short.

    python -m bench.bench_metrics            # JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from bench.facad_records import facad_records

N_CAPTIONS = 2000


def perturb(caption: str, rng: random.Random, vocabulary: list[str]) -> str:
    """A plausible model error: drop, swap or replace a word, or stop early (tests/test_metrics.py uses it too)."""
    words = caption.split()
    op = rng.randrange(4)
    if op == 0 and len(words) > 1:
        del words[rng.randrange(len(words))]
    elif op == 1 and len(words) > 1:
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    elif op == 2:
        words[rng.randrange(len(words))] = rng.choice(vocabulary)
    else:
        words = words[: max(1, len(words) // 2)]
    return " ".join(words)


def make_inputs(n: int, seed: int) -> tuple[dict, dict, dict, dict, dict]:
    """(predictions, references, attributes, categories, wordmap) over the first n FACAD sample records."""
    records = facad_records(n)
    rng = random.Random(seed)
    vocabulary = sorted({w for r in records for w in r["description"].split()})
    names = sorted({r["title"].split()[-1] for r in records})
    category = {name: i for i, name in enumerate(names, start=1)}
    predictions = {r["id"]: perturb(r["description"], rng, vocabulary) for r in records}
    references = {r["id"]: [r["description"]] for r in records}
    attributes = {r["id"]: r["title"].split()[:-1] or None for r in records}
    categories = {r["id"]: category[r["title"].split()[-1]] for r in records}
    return predictions, references, attributes, categories, {str(i): name for name, i in category.items()}


def measure(n: int) -> dict:
    """Cold then warm timings in this process; meaningful only in a fresh one (see `run`)."""
    start = time.perf_counter()
    from fashioncap.metrics import compute_caption_metrics

    import_s = time.perf_counter() - start
    timings, result = {}, None
    for label, seed in (("cold_s", 0), ("warm_s", 1)):
        predictions, references, attributes, categories, wordmap = make_inputs(n, seed)
        start = time.perf_counter()
        result = compute_caption_metrics(predictions, references, attributes, categories, wordmap)
        timings[label] = round(time.perf_counter() - start, 2)
    return {"import_s": round(import_s, 2), **timings, "warm_result": result}


def run(n: int = N_CAPTIONS) -> dict:
    """Score n captions twice in a fresh Python process; return the timings and the warm call's metrics."""
    proc = subprocess.run(
        [sys.executable, "-m", __spec__.name, "--measure", str(n)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode:
        raise RuntimeError(f"the benchmark process failed:\n{proc.stderr[-4000:]}")
    return {"benchmark": "score captions, all metrics", "captions": n, **json.loads(proc.stdout)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=N_CAPTIONS, help="captions to score")
    parser.add_argument(
        "--measure", type=int, metavar="N", help=argparse.SUPPRESS
    )  # the fresh process's side
    args = parser.parse_args()
    print(json.dumps(measure(args.measure) if args.measure else run(args.n), indent=2))
