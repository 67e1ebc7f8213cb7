"""A guard while training: the RL step's captions checked for collapse, so an overdosed REINFORCE term is caught
at the step it happens instead of at the final evaluation (issue 24).

Every RL step the trainer hands over the sampled captions and the greedy captions of the same images; their
health (repeated-trigram share, distinct-1/2, mean length, share run to the length limit) is logged as
`health/sampled_*` and `health/greedy_*`. When the greedy captions, what evaluation would show, cross a threshold
no reference set reaches (`fashioncap.metrics.health.collapse_signs`), ONE warning line says so and which key to
turn down, and that step's completions table is logged; with `collapse_guard: stop` the run also saves a
checkpoint at the end of the step and ends with a `CollapseError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from transformers import TrainerCallback

from fashioncap.errors import UserError
from fashioncap.metrics.health import caption_health, collapse_signs
from fashioncap.ranks import agreed_by_any_rank

logger = logging.getLogger(__name__)

LOGGED = ("repeated_trigram_share", "distinct_1", "distinct_2", "mean_length", "length_limit_share")


class CollapseError(UserError):
    """The captions collapsed during RL and `collapse_guard: stop` ended the run."""


def rollout_health(captions: Sequence[str], at_length_limit: Sequence[bool]) -> dict[str, float]:
    """The logged health figures of one batch of captions (`caption_health`'s, by name)."""
    health = caption_health(captions, max_new_tokens_hits=at_length_limit)
    return {name: health[name] for name in LOGGED}


def advice(rl_weight: float, loss_type: str) -> str:
    """Which key to turn: the dose, and the per-token normalisation where the run sums each caption's
    log-probabilities (its RL gradient per token then grows with the caption's length)."""
    turn_down = f"turn rl_weight down (now {rl_weight:g})"
    return f"{turn_down} or use loss_type: grpo" if loss_type == "sequence_sum" else turn_down


class CollapseGuard(TrainerCallback):
    """Checks each RL step's greedy captions (`check`); on collapse warns once and, in `stop` mode, saves and
    stops at the end of the step (every rank together: any rank's collapse stops all)."""

    def __init__(self, mode: str, rl_weight: float = 1.0, loss_type: str = "sequence_sum"):
        self.mode = mode  # one of configs.GUARD_MODES, checked with the recipe
        self.advice = advice(rl_weight, loss_type)
        self.collapsed_at: int | None = None  # the first step whose captions collapsed
        self.signs: list[str] = []
        self.stopped = False
        self._pending = False

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def check(self, step: int, health: dict[str, float], example: str) -> bool:
        """True the first time `health` (of the greedy captions) shows a collapse; warns on one line."""
        signs = collapse_signs(
            health["repeated_trigram_share"], health["length_limit_share"], health["mean_length"]
        )
        if not signs:
            return False
        self._pending = True
        if self.collapsed_at is not None:
            return False
        self.collapsed_at, self.signs = step, signs
        logger.warning(
            "the captions are collapsing at step %d: of the greedy captions, %s (e.g. %r); %s "
            "(RUN/completions.jsonl has this step's samples)%s",
            step, "; ".join(signs), example, self.advice,
            ": stopping (collapse_guard: stop)" if self.mode == "stop" else "",
        )  # fmt: skip
        return True

    def on_step_end(self, args, state, control, **kwargs):
        if self.mode == "stop":
            if agreed_by_any_rank(self._pending, args.device):
                self.collapsed_at = state.global_step if self.collapsed_at is None else self.collapsed_at
                control.should_save = True
                control.should_training_stop = True
                self.stopped = True
        self._pending = False
        return control

    def error(self, output_dir: str) -> CollapseError:
        """What ends a stopped run: the step, the signs, where the checkpoint is, and what to change."""
        return CollapseError(
            f"the captions collapsed at step {self.collapsed_at} ({'; '.join(self.signs) or 'on another rank'}): "
            f"stopped and saved a checkpoint in {output_dir}; {self.advice} (collapse_guard: warn only warns)"
        )
