"""Caption metrics as the COCO caption evaluation computes them, plus the ALS/SLS rewards as metrics.

PTB tokenization, then BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr(-D) and SPICE from pycocoevalcap, on its scale
(0-1, CIDEr 0-10). Unlike the stock `COCOEvalCap.evaluate()`, each scorer runs on its own, so a metric that
cannot run (SPICE without its CoreNLP jars) is `None` with a reason and the others still come back.

Three things the stock wrappers get wrong are handled here:
- the PTB tokenizer writes its temp file into the package folder (fails in a read-only venv) and silently
  misaligns captions when one holds a line break other than "\\n" (e.g. "\\r", U+2028): captions are put on
  one line first and tokenized from a private temp dir, in one JVM for references and predictions;
- METEOR's JVM takes ~10 s to start: one per process, started on first use, reused, closed at exit;
- SPICE writes into the package folder too and needs extra flags and a JavaScript engine on Java 17.

Each metric also keeps its per-image scores, for seeded bootstrap intervals over images (`ci95`) and for
paired comparisons of two runs (`compare_runs`). See `STATISTICS` for how each interval is computed.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import spice as _spice
from pycocoevalcap.tokenizer import ptbtokenizer as _ptb

from fashioncap import rewards
from fashioncap.errors import MissingDependencyError
from fashioncap.metrics.bootstrap import (
    Statistic,
    bootstrap_ci,
    corpus_bleu,
    corpus_meteor,
    mean,
    paired_bootstrap,
)
from fashioncap.metrics.ids import describe_ids
from fashioncap.text import join_spaced_hyphens

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
SPICE_LIB_ENV = "FASHIONCAP_SPICE_LIB"
SPICE_HEAP_ENV = "FASHIONCAP_SPICE_HEAP"  # the JVM's -Xmx for SPICE: its 8G default fails on small machines
SPICE_HEAP_DEFAULT = "8G"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
JAVA_INSTALL_HINT = "Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"

_SPICE_DIR = Path(_spice.__file__).resolve().parent
_JAVA_OPENS = ("java.lang", "java.math", "java.util", "java.util.concurrent", "java.net", "java.text")
_JS_ENGINE_JARS = ("js.jar", "rhino.jar")
_SYSTEM_JAVA_DIR = Path("/usr/share/java")

ImageId = Hashable
PerImage = dict[ImageId, float]
T = TypeVar("T")

# How each metric's per-image scores make the value its interval is for; the intervals are approximate where
# the corpus metric is not a function of per-image sums:
# - BLEU-4: exact. Per image [hypothesis length, closest reference length, 4 n-gram counts, 4 clipped
#   matches]; corpus BLEU (brevity penalty included) from their sums, as pycocoevalcap's BleuScorer computes it.
# - CIDEr: mean of per-image CIDEr-D, document frequencies fixed from all the images' references (a resample
#   would count a drawn image's n-grams as often as it was drawn; that change to the IDF is ignored).
# - METEOR: exact. Per image the statistics line of METEOR 1.5's SCORE command (lengths, function words,
#   matches per stage, chunks); corpus METEOR from their sums, as its EVAL command computes the reported value.
# - ROUGE-L, SPICE, ALS, SLS: means of per-image scores, as the reported values are.
STATISTICS: dict[str, Statistic] = {
    "BLEU-4": corpus_bleu,
    "METEOR": corpus_meteor,
    "ROUGE-L": mean,
    "CIDEr": mean,
    "SPICE": mean,
    "ALS": mean,
    "SLS": mean,
}


class MetricUnavailable(RuntimeError):
    """A metric cannot run here; the message says what is missing and how to provide it."""


def _require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise MissingDependencyError(
            f"Java (17+) is needed by the caption metrics (PTB tokenizer, METEOR). {JAVA_INSTALL_HINT}"
        )
    return java


def _one_line(text: str) -> str:
    """Collapse all whitespace, so each caption is exactly one line for the line-based Java tools."""
    return " ".join(text.split())


# --- tokenization ------------------------------------------------------------------------------------------


def ptb_tokenize(captions: Mapping[ImageId, Sequence[str]]) -> dict[ImageId, list[str]]:
    """pycocoevalcap's PTBTokenizer (same jar, flags and punctuation list), from a private temp dir.

    Returns the same tokens as `PTBTokenizer().tokenize` for captions without line breaks, and keeps captions
    with line breaks aligned with their image where the stock tokenizer shifts every later caption.
    """
    keys = [k for k, caps in captions.items() for _ in caps]
    lines = [_one_line(c) for caps in captions.values() for c in caps]
    tokenized: dict[ImageId, list[str]] = {k: [] for k in captions}
    if not lines:
        return tokenized
    jar = Path(_ptb.__file__).resolve().parent / _ptb.STANFORD_CORENLP_3_4_1_JAR
    with tempfile.TemporaryDirectory(prefix="fashioncap-ptb-") as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_bytes("\n".join(lines).encode())
        cmd = [_require_java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer"]
        proc = subprocess.run([*cmd, "-preserveLines", "-lowerCase", str(path)], capture_output=True)
    if proc.returncode:
        raise RuntimeError(
            f"the PTB tokenizer failed (exit {proc.returncode}): {proc.stderr.decode()[-2000:]}"
        )
    out = proc.stdout.decode().split("\n")
    if len(out) < len(lines) or any(out[len(lines) :]):
        raise RuntimeError(f"the PTB tokenizer returned {len(out)} lines for {len(lines)} captions")
    for key, line in zip(keys, out[: len(keys)], strict=True):
        tokenized[key].append(" ".join(w for w in line.rstrip().split(" ") if w not in _ptb.PUNCTUATIONS))
    return tokenized


# --- METEOR: one JVM per process ---------------------------------------------------------------------------


class _MeteorSession:
    """One pycocoevalcap `Meteor` JVM per process: started on first use, reused by every call, closed at exit.

    Starting it costs ~10 s (JVM + paraphrase table); scoring 1000 captions ~2 s. After a failed call the
    JVM's pipe may be out of step, so it is discarded and the next call starts a fresh one.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._meteor: Meteor | None = None
        self._pid: int | None = None

    def compute_score(self, gts: dict, res: dict) -> float:
        return self.compute_scores(gts, res)[0]

    def compute_scores(self, gts: dict, res: dict) -> tuple[float, dict[ImageId, list[float]]]:
        """(corpus METEOR, per image the statistics it is computed from: `bootstrap.corpus_meteor`)."""
        with self._lock:
            if self._meteor is None or self._pid != os.getpid():  # a forked child must not share the pipe
                _require_java()
                self._meteor, self._pid = Meteor(), os.getpid()
            try:
                score, lines = _meteor_score_and_statistics(self._meteor, gts, res)
            except (OSError, ValueError) as err:
                stderr = self._close()
                raise MetricUnavailable(f"METEOR's JVM failed ({err!r}): {stderr[-2000:]}") from err
        return score, {k: _meteor_statistics(line) for k, line in zip(gts, lines, strict=True)}

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> str:
        meteor, self._meteor = self._meteor, None
        if meteor is None or self._pid != os.getpid():
            return ""
        if meteor.lock.locked():  # the stock wrapper keeps its lock after an error; its __del__ would block
            meteor.lock.release()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
        return meteor.meteor_p.stderr.read().decode(errors="replace")


def _meteor_score_and_statistics(meteor: Meteor, gts: dict, res: dict) -> tuple[float, list[str]]:
    """The stock `Meteor.compute_score`, keeping each segment's statistics line, which it drops: the corpus
    score is a function of their sums, so a bootstrap can resample them without rescoring."""
    with meteor.lock:
        lines = [meteor._stat(res[k][0], gts[k]) for k in gts]
        meteor.meteor_p.stdin.write(f"EVAL ||| {' ||| '.join(lines)}\n".encode())
        meteor.meteor_p.stdin.flush()
        for _ in lines:  # the per-segment scores, then the corpus score
            meteor.meteor_p.stdout.readline()
        return float(meteor.meteor_p.stdout.readline().strip()), lines


def _meteor_statistics(line: str) -> list[float]:
    """A SCORE statistics line as the numbers METEOR's EVAL sums: a segment that matches its reference exactly
    (every word, one chunk) adds no chunk to the corpus's fragmentation (measured against METEOR 1.5)."""
    stats = [float(v) for v in line.split()]
    test_matches, ref_matches = (
        sum(stats[4:20:4]) + sum(stats[6:20:4]),
        sum(stats[5:20:4]) + sum(stats[7:20:4]),
    )
    if test_matches == stats[0] and ref_matches == stats[1] and stats[20] == 1:
        stats[20] = 0.0
    return stats


_METEOR = _MeteorSession()
atexit.register(_METEOR.close)


# --- SPICE -------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _java_major() -> int:
    out = subprocess.run([_require_java(), "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        raise RuntimeError(f"cannot read the Java version from: {out!r}")
    major, minor = int(match.group(1)), int(match.group(2) or 0)
    return minor if major == 1 else major  # "1.8.0" is Java 8


def spice_lib_dir() -> Path:
    """Where SPICE looks for the CoreNLP 3.6.0 jars: $FASHIONCAP_SPICE_LIB, else pycocoevalcap's spice/lib."""
    return Path(os.environ.get(SPICE_LIB_ENV) or _SPICE_DIR / "lib")


def spice_command() -> list[str]:
    """The `java ... edu.anu.spice.SpiceScorer` command line for this machine.

    Raises MetricUnavailable naming everything that is missing. Nothing is downloaded: pycocoevalcap's own
    download (nlp.stanford.edu) is not reachable from many clusters and would stall every evaluation.
    """
    lib = spice_lib_dir()
    problems = []
    missing = [jar for jar in CORENLP_JARS if not (lib / jar).is_file()]
    if missing:
        problems.append(
            f"Stanford CoreNLP 3.6.0 jar(s) {', '.join(missing)} not found in {lib}: run "
            "`fashioncap metrics install-spice` (fetches them from Maven Central), or put them there yourself, "
            f"or set {SPICE_LIB_ENV} to the folder that holds them"
        )
    classpath = [_SPICE_DIR / _spice.SPICE_JAR, _SPICE_DIR / "lib" / "*"]
    if lib.resolve() != (_SPICE_DIR / "lib").resolve():
        classpath.append(lib / "*")
    flags = [f"-Xmx{os.environ.get(SPICE_HEAP_ENV) or SPICE_HEAP_DEFAULT}"]
    major = _java_major()
    if major >= 9:
        flags += [f"--add-opens=java.base/{package}=ALL-UNNAMED" for package in _JAVA_OPENS]
    if major >= 15:  # Nashorn left the JDK in 15; CoreNLP 3.6.0 needs a JavaScript engine
        system = (_SYSTEM_JAVA_DIR / name for name in ("rhino.jar", "js.jar"))  # Debian librhino-java
        candidates = [*(lib / name for name in _JS_ENGINE_JARS), *system]
        engine = next((path for path in candidates if path.is_file()), None)
        if engine is None:
            problems.append(
                f"no JavaScript engine jar for Java {major} (looked for {', '.join(map(str, candidates))}): "
                "install Debian's librhino-java (sudo apt-get install -y librhino-java) or put js.jar in "
                f"{lib}"
            )
        else:
            classpath.append(engine)
    if problems:
        raise MetricUnavailable("SPICE cannot run: " + "; ".join(problems))
    return [_require_java(), *flags, "-cp", os.pathsep.join(map(str, classpath)), "edu.anu.spice.SpiceScorer"]


def spice_cache_dir() -> Path:
    """SPICE's parse cache, per user (the stock wrapper writes it into the package folder)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fashioncap" / "spice"


def spice_scores(gts: Mapping[ImageId, list[str]], res: Mapping[ImageId, list[str]]) -> PerImage:
    """SPICE F-score per image, on PTB-tokenized captions (as COCOEvalCap passes them)."""
    cmd = spice_command()
    ids = list(gts)
    records = [{"image_id": i, "test": res[k][0], "refs": gts[k]} for i, k in enumerate(ids)]
    cache = spice_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fashioncap-spice-") as tmp:
        in_file, out_file = Path(tmp) / "input.json", Path(tmp) / "output.json"
        in_file.write_text(json.dumps(records), encoding="utf-8")
        args = [str(in_file), "-cache", str(cache), "-out", str(out_file), "-subset", "-silent"]
        proc = subprocess.run([*cmd, *args], cwd=_SPICE_DIR, capture_output=True)
        if proc.returncode:
            raise MetricUnavailable(f"SPICE failed (exit {proc.returncode}): {proc.stderr.decode()[-2000:]}")
        results = json.loads(out_file.read_text(encoding="utf-8"))
    scores = {ids[item["image_id"]]: float(item["scores"]["All"]["f"]) for item in results}
    average = _mean(scores) if scores else math.nan
    if len(scores) != len(ids) or not math.isfinite(average):
        raise MetricUnavailable(f"SPICE returned {len(scores)} scores for {len(ids)} images, mean {average}")
    return scores


# --- ALS / SLS: the training rewards, averaged ------------------------------------------------------------


def attribute_score(
    predictions: Mapping[ImageId, str],
    references: Mapping[ImageId, Sequence[str]],
    attributes: Mapping[ImageId, Sequence[str] | None],
) -> float:
    """ALS: mean over images of `attribute_scores`."""
    return _mean(attribute_scores(predictions, references, attributes))


def attribute_scores(
    predictions: Mapping[ImageId, str],
    references: Mapping[ImageId, Sequence[str]],
    attributes: Mapping[ImageId, Sequence[str] | None],
) -> PerImage:
    """ALS per image: `rewards.attribute_reward` against the image's reference attributes.

    Those are the annotation `attributes` where the image has any, else the NOUN/ADJ words of its reference
    captions (`rewards.reference_attributes`, as the training reward does; with several references, their union).
    """
    pairs = [(k, ref) for k in predictions for ref in references[k]]
    per_reference = rewards.reference_attributes(
        [attributes.get(k) for k, _ in pairs], [ref for _, ref in pairs]
    )
    per_image: dict[ImageId, set[str]] = {k: set() for k in predictions}
    for (k, _), attrs in zip(pairs, per_reference, strict=True):
        per_image[k] |= attrs
    scores = rewards.attribute_reward(list(predictions.values()), [per_image[k] for k in predictions])
    return dict(zip(predictions, scores, strict=True))


def category_score(
    predictions: Mapping[ImageId, str],
    categories: Mapping[ImageId, int | None],
    category_wordmap: Mapping | rewards.CategoryMatcher | None,
) -> float:
    """SLS: mean of `category_scores`."""
    return _mean(category_scores(predictions, categories, category_wordmap))


def category_scores(
    predictions: Mapping[ImageId, str],
    categories: Mapping[ImageId, int | None],
    category_wordmap: Mapping | rewards.CategoryMatcher | None,
) -> PerImage:
    """SLS per image: `rewards.category_reward`, for the images whose references carry a category."""
    if category_wordmap is None:
        raise MetricUnavailable(
            "the references carry categories but there is no categories.json (id -> name) for them: put one in "
            "the data dir given as `fashioncap eval --data DIR`, or pass `fashioncap score --categories FILE`"
        )
    ids = [k for k in predictions if categories.get(k) is not None]
    if not ids:
        raise MetricUnavailable("no image has a reference category")
    scores = rewards.category_reward(
        [predictions[k] for k in ids], [categories[k] for k in ids], category_wordmap
    )
    return dict(zip(ids, scores, strict=True))


# --- everything together -----------------------------------------------------------------------------------


def check_inputs(predictions: Mapping[ImageId, str], references: Mapping[ImageId, Sequence[str]]) -> None:
    """Raise ValueError naming the images that break the one-prediction-per-referenced-image contract."""
    problems = []
    unknown = [k for k in predictions if k not in references]
    missing = [k for k in references if k not in predictions]
    not_text = [k for k, v in predictions.items() if not isinstance(v, str)]
    no_refs = [
        k
        for k, refs in references.items()
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs)
    ]
    if unknown:
        problems.append(f"predictions for images without references: {describe_ids(unknown)}")
    if missing:
        problems.append(f"no prediction for {describe_ids(missing)}")
    if not_text:
        problems.append(f"predictions that are not strings: {describe_ids(not_text)}")
    if no_refs:
        problems.append(f"references that are not a non-empty list of strings: {describe_ids(no_refs)}")
    if problems:
        raise ValueError("; ".join(problems))
    if not references:
        raise ValueError("nothing to score: no references")


def scoring_tokens(
    predictions: Mapping[ImageId, str], references: Mapping[ImageId, Sequence[str]]
) -> tuple[dict[ImageId, list[str]], dict[ImageId, list[str]]]:
    """(references, predictions) as the PTB tokens every n-gram metric compares, per image of `references`.

    A prediction's spaced hyphens are joined first ('one - piece' -> 'one-piece'): that is how BLIP's WordPiece
    tokenizer decodes a hyphenated word, and the PTB tokenizer keeps the reference's 'one-piece' whole.
    """
    ids = list(references)
    tokenized = ptb_tokenize(
        {**{("ref", k): references[k] for k in ids},
         **{("pred", k): [join_spaced_hyphens(predictions[k])] for k in ids}}
    )  # fmt: skip
    return {k: tokenized["ref", k] for k in ids}, {k: tokenized["pred", k] for k in ids}


def compute_caption_metrics(
    predictions: Mapping[ImageId, str],
    references: Mapping[ImageId, Sequence[str]],
    attributes: Mapping[ImageId, Sequence[str] | None] | None = None,
    categories: Mapping[ImageId, int | None] | None = None,
    category_wordmap: Mapping | rewards.CategoryMatcher | None = None,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    per_image: bool = False,
) -> dict:
    """Score one caption per image against its reference captions.

    Returns {"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", ["ALS"], ["SLS"], "num_images",
    "unavailable", ["ci95"], ["per_image"]}: ALS is present when `attributes` is given, SLS when `categories` is; a
    metric that cannot run is None with its reason under "unavailable" (empty when everything ran).
    "ci95" (unless `bootstrap` is 0): metric -> [lo, hi], 95% intervals from `bootstrap` resamples of the images
    (seeded by `seed`) for BLEU-4 and the other metrics that ran, computed as `STATISTICS` says.
    "per_image" (only when asked: it grows with the eval set): metric -> {image id: score}, BLEU-4's and
    METEOR's scores being the per-image statistics their corpus values sum; what `compare_runs` takes.
    """
    check_inputs(predictions, references)
    ids = list(references)
    gts, res = scoring_tokens(predictions, references)

    runners: dict[str, Callable[[], tuple[float, PerImage]]] = {
        "ROUGE-L": lambda: _corpus_and_per_image(Rouge().compute_score(gts, res), gts),
        "CIDEr": lambda: _corpus_and_per_image(Cider().compute_score(gts, res), gts),
        "SPICE": lambda: _mean_and_per_image(spice_scores(gts, res)),
    }
    if attributes is not None:
        runners["ALS"] = lambda: _mean_and_per_image(attribute_scores(predictions, references, attributes))
    if categories is not None:
        runners["SLS"] = lambda: _mean_and_per_image(
            category_scores(predictions, categories, category_wordmap)
        )
    # METEOR works in its JVM (and starts it on the first call): run it beside the Python-side metrics
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fashioncap-meteor") as pool:
        meteor = pool.submit(_METEOR.compute_scores, gts, res)
        bleu, bleu_stats = bleu_scores(gts, res)
        results = {name: _attempt(runner) for name, runner in runners.items()}
        results["METEOR"] = _attempt(meteor.result)
    scores: dict = {f"BLEU-{n}": b for n, b in enumerate(bleu, start=1)}
    per_image_scores: dict[str, dict] = {"BLEU-4": bleu_stats}
    unavailable: dict[str, str] = {}
    for name in ["METEOR", *runners]:
        outcome, reason = results[name]
        if reason is None:
            scores[name], per_image_scores[name] = outcome
        else:
            scores[name], unavailable[name] = None, reason
    scores["num_images"] = len(ids)
    scores["unavailable"] = unavailable
    if bootstrap:
        scores["ci95"] = {
            name: bootstrap_ci(
                [values[k] for k in ids if k in values], STATISTICS[name], n=bootstrap, seed=seed
            )
            for name, values in per_image_scores.items()
        }
    if per_image:
        scores["per_image"] = per_image_scores
    return scores


def compare_runs(
    per_image_a: Mapping[str, Mapping], per_image_b: Mapping[str, Mapping], n: int = 1000, seed: int = 0
) -> dict:
    """Run a minus run b on every metric both scored: metric -> {"delta", "ci95"} from a paired bootstrap over
    the images, taking the two runs' "per_image" results. Raises ValueError when they scored different images."""
    return {
        name: paired_bootstrap(per_image_a[name], per_image_b[name], STATISTICS[name], n=n, seed=seed)
        for name in per_image_a
        if name in per_image_b
    }


def bleu_scores(
    gts: Mapping[ImageId, list[str]], res: Mapping[ImageId, list[str]]
) -> tuple[list[float], dict[ImageId, list[int]]]:
    """pycocoevalcap's Bleu(4) corpus BLEU-1..4, and per image the stats `bootstrap.corpus_bleu` sums."""
    scorer = BleuScorer(n=4)
    for k in gts:
        scorer += (res[k][0], gts[k])
    bleu, _ = scorer.compute_score(option="closest")  # what Bleu(4).compute_score asks for
    stats = {}
    for k, cooked in zip(gts, scorer.ctest, strict=True):
        length = cooked["testlen"]
        closest = min((abs(ref - length), ref) for ref in cooked["reflen"])[1]  # BleuScorer's "closest"
        stats[k] = [length, closest, *cooked["guess"], *cooked["correct"]]
    return [float(b) for b in bleu], stats


def _by_image(gts: Mapping[ImageId, list[str]], scores: Sequence[float]) -> PerImage:
    return {k: float(s) for k, s in zip(gts, scores, strict=True)}


def _corpus_and_per_image(
    score_and_scores: tuple, gts: Mapping[ImageId, list[str]]
) -> tuple[float, PerImage]:
    """A pycocoevalcap scorer's (corpus score, per-image scores in gts order) as (float, by image id)."""
    score, scores = score_and_scores
    return float(score), _by_image(gts, scores)


def _mean_and_per_image(scores: PerImage) -> tuple[float, PerImage]:
    return _mean(scores), scores


def _mean(scores: PerImage) -> float:
    return sum(scores.values()) / len(scores)


def _attempt(runner: Callable[[], T]) -> tuple[T | None, str | None]:
    """(result, None), or (None, reason) for a metric that cannot run here."""
    try:
        return runner(), None
    except MetricUnavailable as err:
        return None, str(err)
