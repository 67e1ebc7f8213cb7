"""The `cider` reward: CIDEr-D of each caption against every reference of its image, in process (no JVM).

Document frequencies come from the training split's references, fixed once by `prepare` (the trainer calls it
with the training split), so a caption's reward does not depend on which other images share its batch. The
references of a row's image come in the `references` column (`fashioncap.data.with_references`). Scores are on
pycocoevalcap's scale (0-10; a good caption of the synthetic set scores about 2-5), ten times the range of ALS
and SLS: weigh it down in a recipe (trial 5 gives it 0.3).
"""

from __future__ import annotations

from collections.abc import Sequence

from fashioncap.metrics.cider_d import CiderD


class CiderReward:
    def __init__(self):
        self.cider: CiderD | None = None

    def prepare(self, dataset) -> None:
        """Document frequencies from `dataset`'s captions, grouped by image (one row per annotation)."""
        corpus: dict = {}
        for image_id, caption in zip(dataset["image_id"], dataset["caption"], strict=True):
            corpus.setdefault(image_id, []).append(caption)
        self.cider = CiderD(list(corpus.values()))

    def __call__(self, completions: Sequence[str], references: Sequence[Sequence[str]], **_) -> list[float]:
        if self.cider is None:
            raise RuntimeError(
                "cider needs prepare(training split) first: its document frequencies come from there"
            )
        return self.cider.score(completions, references)
