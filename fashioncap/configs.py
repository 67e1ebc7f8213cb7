"""Recipe configuration: dataclasses read from a flat YAML file, then `--key value` overrides from the command line.

Everything goes through `HfArgumentParser` as command-line strings, so YAML values get argparse's type checks
(`lora_r: abc` is an error that names the key) and an unknown key is an error rather than a silent no-op.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from fashioncap.modeling import DEFAULT_MODEL, LORA_PRESETS


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=DEFAULT_MODEL, metadata={"help": "Hub id or local dir of a BLIP model"}
    )
    base_recipe: str | None = field(
        default=None,
        metadata={"help": "recipe that trains `model_name_or_path` first when it is a missing local dir"},
    )
    tiny_model: bool = field(
        default=False,
        metadata={"help": "build a tiny BLIP from the data's vocabulary instead of loading one"},
    )
    label_smoothing: float | None = field(
        default=None, metadata={"help": "text_config.label_smoothing (BLIP: 0.1)"}
    )
    lora_preset: str = field(
        default="decoder", metadata={"help": f"{' | '.join(LORA_PRESETS)} | none (full)"}
    )
    vision_lora_layers: int = field(
        default=6, metadata={"help": "decoder+vision: LoRA on the last N vision layers"}
    )
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_bias: str = "none"
    lora_modules_to_save: list[str] = field(
        default_factory=list, metadata={"help": "modules trained in full and saved with the adapter"}
    )


@dataclass
class DataArguments:
    data_dir: str = field(
        default="data/facad", metadata={"help": "data dir (design.md layout) or a Hub data set id"}
    )
    data_from_hub: bool = field(
        default=False, metadata={"help": "data_dir is a Hub data set id with the same columns"}
    )
    train_split: str = "train"
    eval_split: str = "val"
    test_split: str = "test"
    max_length: int = field(default=50, metadata={"help": "caption tokens, [DEC] and [SEP] included"})
    augment: bool = field(default=False, metadata={"help": "random flip and small shifts of training images"})
    build_synthetic_if_missing: bool = field(
        default=False, metadata={"help": "build the synthetic fashion set into data_dir when it is missing"}
    )
    max_train_samples: int | None = None
    max_eval_samples: int | None = None


@dataclass
class RewardArguments:
    reward_funcs: list[str] = field(default_factory=list, metadata={"help": "registry names, e.g. als sls"})
    reward_weights: list[float] = field(
        default_factory=list, metadata={"help": "one per reward (default: all 1)"}
    )
    mle_weight: float = 1.0
    rl_weight: float = field(
        default=0.0, metadata={"help": "weight of the REINFORCE term (needs reward_funcs)"}
    )
    num_samples: int = field(default=4, metadata={"help": "H: captions sampled per image"})
    baseline: str = field(
        default="mean", metadata={"help": "mean (the seed's) | loo (leave-one-out) | greedy"}
    )
    rl_start: float = field(
        default=0.0,
        metadata={"help": "fraction of the steps trained by MLE alone before the REINFORCE term starts"},
    )
    sample_temperature: float = 1.0
    sample_top_k: int = field(default=0, metadata={"help": "0 samples from the full distribution"})
    max_sample_tokens: int = 50

    def __post_init__(self):
        if self.baseline not in ("mean", "loo", "greedy"):
            raise ValueError(f"baseline must be mean, loo or greedy, not {self.baseline!r}")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"{len(self.reward_weights)} reward_weights for {len(self.reward_funcs)} reward_funcs"
            )
        if not 0.0 <= self.rl_start < 1.0:
            raise ValueError(f"rl_start is a fraction of the training steps in [0, 1), not {self.rl_start}")
        if self.rl_weight and not self.reward_funcs:
            raise ValueError("rl_weight is set but reward_funcs is empty")
        if self.rl_weight and self.num_samples < (2 if self.baseline == "loo" else 1):
            raise ValueError(f"num_samples={self.num_samples} is too few for the {self.baseline} baseline")

    @property
    def weights(self) -> list[float]:
        return list(self.reward_weights) or [1.0] * len(self.reward_funcs)


@dataclass
class GenerationArguments:
    num_beams: int = 3
    max_new_tokens: int = 50
    min_new_tokens: int = 5

    def generate_kwargs(self) -> dict:
        return dataclasses.asdict(self)


CONFIG_CLASSES = (
    ModelArguments,
    DataArguments,
    RewardArguments,
    GenerationArguments,
    Seq2SeqTrainingArguments,
)


@dataclass
class RecipeConfig:
    model: ModelArguments
    data: DataArguments
    reward: RewardArguments
    generation: GenerationArguments
    training: Seq2SeqTrainingArguments
    source: str | None = None

    def to_dict(self) -> dict:
        """Everything a later `eval` or model card needs; never the Hub token."""
        training = {k: v for k, v in self.training.to_dict().items() if "token" not in k}
        return {
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "reward": dataclasses.asdict(self.reward),
            "generation": dataclasses.asdict(self.generation),
            "training": training,
            "source": self.source,
        }


def _field_names() -> set[str]:
    return {f.name for cls in CONFIG_CLASSES for f in dataclasses.fields(cls) if f.init}


def _to_argv(values: dict) -> list[str]:
    argv: list[str] = []
    for key, value in values.items():
        if value is None or value == []:
            continue
        argv.append(f"--{key}")
        if isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, list | tuple):
            argv.extend(str(v) for v in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def _overrides(argv: list[str]) -> dict:
    """`--key value [value ...]` pairs as strings (argparse types them: `--save_strategy no` stays "no")."""
    values: dict = {}
    key = None
    for token in argv:
        if token.startswith("--"):
            key, _, inline = token[2:].partition("=")
            values[key] = [inline] if inline else []
        elif key is None:
            raise ValueError(f"unexpected argument {token!r}: overrides look like --key value")
        else:
            values[key].append(token)
    return {k: (True if not v else v[0] if len(v) == 1 else v) for k, v in values.items()}


def load_config(config_path: str | Path | None, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a recipe YAML and apply command-line overrides; unknown keys and bad values are errors naming them."""
    values: dict = {}
    if config_path is not None:
        config_path = Path(config_path)
        if not config_path.is_file():
            raise FileNotFoundError(f"recipe {config_path} does not exist")
        loaded = yaml.safe_load(config_path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_path}: a recipe is a flat mapping of keys to values")
        values.update(loaded)
    cli = _overrides(overrides or [])
    known = _field_names()
    for origin, mapping in ((str(config_path), values), ("the command line", cli)):
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in {origin}")
    values.update(cli)
    values.setdefault("output_dir", "outputs/run")
    values["remove_unused_columns"] = False  # image/text columns are processed in the collator
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # accelerate's multi-process launcher does not pass ACCELERATE_USE_CPU to the ranks: without use_cpu each
        # CPU rank would silently train alone (world size 1, no gradient all-reduce)
        values.setdefault("use_cpu", True)
    parser = HfArgumentParser(CONFIG_CLASSES)
    try:
        model, data, reward, generation, training = parser.parse_args_into_dataclasses(
            args=_to_argv(values), look_for_args_file=False
        )
    except SystemExit as exc:  # argparse prints the offending key and value before exiting
        raise ValueError(
            f"invalid value in {config_path or 'the command line'} (see the message above)"
        ) from exc
    return RecipeConfig(
        model, data, reward, generation, training, source=str(config_path) if config_path else None
    )
