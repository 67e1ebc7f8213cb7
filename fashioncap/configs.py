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
        default="data/facad", metadata={"help": "data dir (docs/data.md layout) or a Hub data set id"}
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


def _help(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


# The recipe's sections beyond the Trainer's own arguments: saved apart in the run's config, shown on the card.
SECTIONS = {
    "reward": (
        "reward_funcs", "reward_weights", "mle_weight", "rl_weight", "num_samples", "baseline", "rl_start",
        "sample_temperature", "sample_top_k", "max_sample_tokens",
    ),
    "generation": ("num_beams", "max_new_tokens", "min_new_tokens"),
}  # fmt: skip


@dataclass
class FashionCapTrainingArguments(Seq2SeqTrainingArguments):
    """The Trainer's arguments plus the REINFORCE and generation settings: the trainer reads all from `self.args`.

    Its own fields are grouped into `SECTIONS` only for the run's saved recipe and its model card.
    """

    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "reward functions: registry names (als, sls) or dotted import paths (my_pkg.rewards.brevity)"
        },
    )
    reward_weights: list[float] = field(
        default_factory=list, metadata={"help": "one per reward (default: all 1)"}
    )
    mle_weight: float = _help(1.0, "weight of the MLE (teacher-forced cross-entropy) term")
    rl_weight: float = _help(0.0, "weight of the REINFORCE term (needs reward_funcs)")
    num_samples: int = _help(4, "H: captions sampled per image")
    baseline: str = _help("mean", "mean (the seed's) | loo (leave-one-out) | greedy (self-critical)")
    rl_start: float = _help(
        0.0, "fraction of the steps trained by MLE alone before the REINFORCE term starts"
    )
    sample_temperature: float = _help(1.0, "temperature of the sampled captions")
    sample_top_k: int = _help(0, "0 samples from the full distribution")
    max_sample_tokens: int = _help(50, "new tokens per sampled caption at most")
    num_beams: int = _help(3, "beams for evaluation captions")
    max_new_tokens: int = _help(50, "new tokens per evaluation caption at most")
    min_new_tokens: int = _help(5, "new tokens per evaluation caption at least")

    def __post_init__(self):
        super().__post_init__()
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
        """One weight per reward function (all 1 unless the recipe says otherwise)."""
        return list(self.reward_weights) or [1.0] * len(self.reward_funcs)

    def section(self, name: str) -> dict:
        """The fields of one section ("reward" or "generation") as a dict."""
        return {key: getattr(self, key) for key in SECTIONS[name]}

    def generate_kwargs(self) -> dict:
        """The evaluation captions' settings, as `generate` takes them."""
        return self.section("generation")


CONFIG_CLASSES = (ModelArguments, DataArguments, FashionCapTrainingArguments)


@dataclass
class RecipeConfig:
    model: ModelArguments
    data: DataArguments
    training: FashionCapTrainingArguments
    source: str | None = None

    def to_dict(self) -> dict:
        """Everything a later `eval` or model card needs; never the Hub token."""
        sectioned = {key for keys in SECTIONS.values() for key in keys}
        training = {
            k: v for k, v in self.training.to_dict().items() if "token" not in k and k not in sectioned
        }
        return {
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "reward": self.training.section("reward"),
            "generation": self.training.section("generation"),
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
        model, data, training = parser.parse_args_into_dataclasses(
            args=_to_argv(values), look_for_args_file=False
        )
    except SystemExit as exc:  # argparse prints the offending key and value before exiting
        raise ValueError(
            f"invalid value in {config_path or 'the command line'} (see the message above)"
        ) from exc
    return RecipeConfig(model, data, training, source=str(config_path) if config_path else None)
