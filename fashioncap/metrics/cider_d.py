"""CIDEr-D in process, for use as a training reward: no JVM, no PTB tokenizer, fixed document frequencies.

The same arithmetic as pycocoevalcap's `Cider` (which is CIDEr-D: TF-IDF n-gram vectors for n = 1..4, clipped
cosine similarity, a Gaussian length penalty with sigma 6, the mean over n and references, times 10), with two
differences that make it a reward:
- document frequencies come from a fixed corpus (the training split's references) given once, where
  pycocoevalcap takes them from the references of the captions being scored, so a caption's reward does not
  depend on which other images share its batch;
- captions are tokenised by `fashioncap.text.normalize_text` (lower case, split on non-word characters).
With the same references as the corpus and captions tokenised alike, the scores are pycocoevalcap's.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Sequence

from fashioncap.text import normalize_text, word_ngrams

NGram = tuple[str, ...]
# per n-gram order: the TF-IDF weights, and their norm; then pycocoevalcap's length (its count of bigrams)
Vector = tuple[list[dict[NGram, float]], list[float], int]


def tokenize(text: str) -> list[str]:
    return normalize_text(text).split()


def ngram_counts(words: Sequence[str], max_n: int) -> Counter[NGram]:
    return Counter(g for n in range(1, max_n + 1) for g in word_ngrams(words, n))


class CiderD:
    """CIDEr-D scores against document frequencies fixed from `reference_corpus` (one list of references per
    image). Holds no state but its own: picklable (the reference cache is left out of the pickle).

    `cache_size`: how many reference lists keep their vectors (least recently used dropped first); about 20 kB
    each for two 20-word references.
    """

    def __init__(
        self,
        reference_corpus: Sequence[Sequence[str]],
        n: int = 4,
        sigma: float = 6.0,
        cache_size: int = 4096,
    ):
        if not reference_corpus:
            raise ValueError(
                "CIDEr-D needs the references of at least one image for its document frequencies"
            )
        self.n, self.sigma, self.cache_size = n, sigma, cache_size
        document_frequency: Counter[NGram] = Counter()
        for references in reference_corpus:
            document_frequency.update({g for ref in references for g in ngram_counts(tokenize(ref), n)})
        self._log_documents = math.log(len(reference_corpus))
        # IDF: log(documents / df); an n-gram no reference holds gets log(documents), as in pycocoevalcap
        self._idf = {g: self._log_documents - math.log(df) for g, df in document_frequency.items()}
        self._reference_cache: OrderedDict[tuple[str, ...], list[Vector]] = OrderedDict()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reference_cache": OrderedDict()}

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        """CIDEr-D of each candidate against its own references (0-10 scale, as pycocoevalcap reports it)."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
        return [self._score_one(c, refs) for c, refs in zip(candidates, references, strict=True)]

    def _score_one(self, candidate: str, references: Sequence[str]) -> float:
        if not references or isinstance(references, str):
            raise ValueError(f"each candidate needs a non-empty list of references, got {references!r}")
        candidate_vector = self._vector(tokenize(candidate))
        total = sum(self._similarity(candidate_vector, ref) for ref in self._reference_vectors(references))
        return total / len(references) * 10.0

    def _reference_vectors(self, references: Sequence[str]) -> list[Vector]:
        """The references' vectors, cached per reference list: RL scores several samples per image."""
        key = tuple(references)
        vectors = self._reference_cache.get(key)
        if vectors is None:
            vectors = [self._vector(tokenize(ref)) for ref in references]
            self._reference_cache[key] = vectors
            if len(self._reference_cache) > self.cache_size:
                self._reference_cache.popitem(last=False)
        else:
            self._reference_cache.move_to_end(key)
        return vectors

    def _vector(self, words: Sequence[str]) -> Vector:
        weights: list[dict[NGram, float]] = [{} for _ in range(self.n)]
        for ngram, count in ngram_counts(words, self.n).items():
            weights[len(ngram) - 1][ngram] = count * self._idf.get(ngram, self._log_documents)
        norms = [math.sqrt(sum(w * w for w in order.values())) for order in weights]
        bigrams = max(len(words) - 1, 0)  # pycocoevalcap's "length" counts the bigrams, not the words
        return weights, norms, bigrams

    def _similarity(self, candidate: Vector, reference: Vector) -> float:
        """Mean over n-gram orders of the clipped cosine, times the Gaussian length penalty."""
        (cand_weights, cand_norms, cand_length), (ref_weights, ref_norms, ref_length) = candidate, reference
        penalty = math.exp(-((cand_length - ref_length) ** 2) / (2 * self.sigma**2))
        total = 0.0
        for cand, ref, cand_norm, ref_norm in zip(
            cand_weights, ref_weights, cand_norms, ref_norms, strict=True
        ):
            clipped = sum(min(cand[g], ref[g]) * ref[g] for g in cand.keys() & ref.keys())
            if cand_norm and ref_norm:
                clipped /= cand_norm * ref_norm
            total += clipped * penalty
        return total / self.n
