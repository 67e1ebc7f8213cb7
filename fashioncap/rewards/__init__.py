"""Rewards for fashion captions, one module per reward family (TRL's `trl/rewards/` layout): `attributes` (ALS,
ALS-F1), `category` (SLS), `repetition`, `cider` (CIDEr-D); this module holds the registry.

Pure, batched functions over lists of captions. The same definitions serve two uses: the REINFORCE
reward during training and the ALS/SLS metrics at evaluation, so the two can never drift apart.

Reward functions follow TRL's convention: they take the sampled `completions` and every dataset column as a
keyword argument (`caption`, `references` (every caption of the row's image), `attributes`, `category`,
`image_id`, any column a data set adds), plus `category_wordmap`; they ignore what they do not need and return
one float per completion. A recipe names them by registry name (`REWARD_FUNCS`) or by dotted import path
(`my_pkg.my_rewards.brevity`); a name or path that gives a class gets a fresh instance per trainer.

A reward that needs the whole training split (CIDEr-D's document frequencies, ALS-F1's attribute vocabulary)
has a method `prepare(dataset)`: `build_trainer` calls it once with the training split before the first step,
and `eval` with the annotations of the split it scores (`prepare_rewards`). `dataset` is read by column
(`dataset["caption"]`, one row per annotation): a `datasets.Dataset` or a dict of lists.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence

from fashioncap.errors import ConfigError
from fashioncap.rewards.attributes import (
    AttributeF1Reward,
    als_reward,
    attribute_reward,
    clean_attributes,
    extract_attributes,
    reference_attributes,
)
from fashioncap.rewards.category import CategoryMatcher, category_matcher, category_reward, sls_reward
from fashioncap.rewards.repetition import repetition_reward

__all__ = [
    "REWARD_FUNCS",
    "AttributeF1Reward",
    "CategoryMatcher",
    "als_reward",
    "attribute_reward",
    "category_matcher",
    "category_reward",
    "clean_attributes",
    "extract_attributes",
    "get_reward_funcs",
    "prepare_rewards",
    "reference_attributes",
    "repetition_reward",
    "resolve_reward",
    "reward_name",
    "sls_reward",
]


RewardFunc = Callable[..., list[float]]
# A function, a class (one instance per trainer) or an import path resolved on first use: CIDEr-D's reward uses
# the metrics package, which imports this module.
REWARD_FUNCS: dict[str, RewardFunc | type | str] = {
    "als": als_reward,
    "sls": sls_reward,
    "als_f1": AttributeF1Reward,
    "repetition": repetition_reward,
    "cider": "fashioncap.rewards.cider.CiderReward",
}


def reward_name(spec: str) -> str:
    """What a reward is logged as (`reward/<name>`): its registry name, or the last part of its import path."""
    return spec.rsplit(".", 1)[-1]


def resolve_reward(spec: str) -> RewardFunc:
    """A registry name, or a dotted path `package.module.function` importable from PYTHONPATH; a class found
    either way is instantiated (no arguments), so each trainer prepares its own."""
    func = REWARD_FUNCS.get(spec, spec)
    if isinstance(func, str):
        module_name, _, attribute = func.rpartition(".")
        if not module_name:
            raise ConfigError(
                f"unknown reward function {spec!r}: use a registry name ({', '.join(sorted(REWARD_FUNCS))}) "
                "or a dotted import path (my_pkg.my_rewards.brevity)"
            )
        try:
            func = getattr(importlib.import_module(module_name), attribute)
        except ImportError as err:
            raise ConfigError(f"reward function {spec!r}: cannot import {module_name!r} ({err})") from err
        except AttributeError:
            raise ConfigError(f"reward function {spec!r}: {module_name!r} has no {attribute!r}") from None
    if isinstance(func, type):
        func = func()
    if not callable(func):
        raise ConfigError(f"reward function {spec!r} is not callable")
    return func


def get_reward_funcs(specs: Sequence[str]) -> dict[str, RewardFunc]:
    """name -> function for each spec in order; two specs with the same name are an error (their logs would mix)."""
    funcs: dict[str, RewardFunc] = {}
    for spec in specs:
        name = reward_name(spec)
        if name in funcs:
            raise ConfigError(f"two reward functions are named {name!r}: {list(specs)}")
        funcs[name] = resolve_reward(spec)
    return funcs


def prepare_rewards(funcs: Mapping[str, RewardFunc], dataset) -> None:
    """Call `prepare(dataset)` on each reward that has it (see the module's docstring)."""
    for func in funcs.values():
        if callable(getattr(func, "prepare", None)):
            func.prepare(dataset)
