"""Recipe configuration: dataclasses read from a flat YAML file, then `--key value` overrides from the command line.

Everything goes through `HfArgumentParser` as command-line strings, so YAML values get argparse's type checks
(`lora_r: abc` is an error that names the key) and an unknown key is an error rather than a silent no-op.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, Seq2SeqTrainingArguments
from transformers.utils import is_torch_bf16_gpu_available

from fashioncap.errors import ConfigError, did_you_mean, is_main_process, missing_path
from fashioncap.models import DEFAULT_FAMILY, FAMILIES
from fashioncap.models.blip import DEFAULT_MODEL
from fashioncap.models.lora import LORA_PRESETS
from fashioncap.recipe_keys import GENERATION_DEFAULTS, RECIPE_KEYS

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Hub id or local dir of a captioner of a registered family (BLIP)"},
    )
    base_recipe: str | None = field(
        default=None,
        metadata={"help": "recipe that trains `model_name_or_path` first when it is a missing local dir"},
    )
    tiny_model: bool = field(
        default=False,
        metadata={"help": "build a tiny model from the data's vocabulary instead of loading one"},
    )
    tiny_family: str = field(
        default=DEFAULT_FAMILY, metadata={"help": f"the family tiny_model builds: {' | '.join(FAMILIES)}"}
    )
    label_smoothing: float | None = field(
        default=None, metadata={"help": "the text decoder's label smoothing (BLIP: 0.1)"}
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
    init_from_run: str | None = field(
        default=None,
        metadata={
            "help": "a finished run whose adapter this run continues from (same base and LoRA settings); the "
            "optimizer and schedule start afresh"
        },
    )
    caption_prompt: str | None = field(
        default=None,
        metadata={
            "help": "the text a family's processor takes with the image (Florence-2: a task token, <CAPTION> "
            "by default, or a prompt); BLIP takes none"
        },
    )


@dataclass
class DataArguments:
    data_dir: str = field(
        default="data/facad", metadata={"help": "data dir (docs/data.md layout) or a Hub data set id"}
    )
    data_from_hub: bool = field(
        default=False, metadata={"help": "data_dir is a Hub data set id with the same columns"}
    )
    category_names: str | None = field(
        default=None,
        metadata={"help": "categories.json to use (default: the data dir's, or the Hub data set repo's)"},
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
SECTIONS = {name: RECIPE_KEYS[name] for name in ("reward", "generation")}


def _processes(world: int) -> str:
    return f"{world} process" if world == 1 else f"{world} processes"


def batch_arithmetic(args) -> str:
    """How the images of one optimizer step add up: '2 processes x 4 per device x 2 accumulation = 16'."""
    world, per_device, accumulation = (
        args.world_size,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
    )
    return (
        f"{_processes(world)} x {per_device} per device x {accumulation} accumulation = "
        f"{world * per_device * accumulation}"
    )


def apply_global_batch_size(args) -> None:
    """Derive gradient_accumulation_steps: processes x per-device batch x accumulation = global_batch_size.

    The seed's batch (16) then holds on any number of GPUs: 16 per device on 1 GPU, 2 per device on 8. An
    accumulation the recipe sets itself (other than 1) must agree; a split that does not divide is an error.
    """
    total = args.global_batch_size
    if total is None:
        return
    world, per_device = args.world_size, args.per_device_train_batch_size
    per_step = world * per_device
    if total % per_step:
        problem = (
            f"{_processes(world)} x {per_device} per device = {per_step} images is already more than that"
            if per_step > total
            else f"it is not a multiple of {_processes(world)} x {per_device} per device = {per_step}"
        )
        remedy = (
            f"set per_device_train_batch_size to a divisor of {total // world} "
            f"({total} / {_processes(world)})"
            if total % world == 0
            else f"{total} images cannot be split evenly over {_processes(world)}"
        )
        raise ValueError(f"global_batch_size {total}: {problem}; {remedy}")
    accumulation = total // per_step
    if args.gradient_accumulation_steps not in (1, accumulation):
        raise ValueError(
            f"gradient_accumulation_steps {args.gradient_accumulation_steps} contradicts global_batch_size "
            f"{total} = {_processes(world)} x {per_device} per device x {accumulation} accumulation: drop one"
        )
    if accumulation == args.gradient_accumulation_steps:
        return
    args.gradient_accumulation_steps = accumulation
    if args.deepspeed:  # TrainingArguments filled the DeepSpeed config's "auto" values with the old value
        from accelerate.utils import DeepSpeedPlugin
        from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

        args.hf_deepspeed_config = HfTrainerDeepSpeedConfig(args.deepspeed)
        args.hf_deepspeed_config.trainer_config_process(args)
        args.deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=args.hf_deepspeed_config)


class OutOfRangeError(ConfigError):
    """A number outside the range a run can train with; `load_config` names where the value came from."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


# The ranges checked before anything is built: a negative batch size used to fail deep in the data loader
# (a 41-line traceback) after the output dir was created.
AT_LEAST_ONE = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "global_batch_size",
    "num_samples",
    "max_sample_tokens",
)
ABOVE_ZERO = ("learning_rate", "num_train_epochs", "sample_temperature")
NOT_NEGATIVE = ("mle_weight", "rl_weight", "kl_weight", "weight_decay")


def check_ranges(args) -> None:
    """OutOfRangeError for the first value out of its range (NaN included; None means unset)."""
    for key in AT_LEAST_ONE:
        value = getattr(args, key)
        if value is not None and not value >= 1:
            raise OutOfRangeError(key, f"{value} is not at least 1")
    for key in ABOVE_ZERO:
        value = getattr(args, key)
        if not value > 0:
            raise OutOfRangeError(key, f"{value} is not above 0")
    for key in NOT_NEGATIVE:
        value = getattr(args, key)
        if not 0 <= value < math.inf:
            raise OutOfRangeError(key, f"{value} is not a finite number of at least 0")
    for weight in args.reward_weights:
        if not math.isfinite(weight):
            raise OutOfRangeError("reward_weights", f"{weight} is not a finite number")


LOSS_TYPES = (
    "sequence_sum",
    "grpo",
    "dapo",
    "dr_grpo",
)  # TRL's names (fashioncap.rl.normalised_logprobs)
GUARD_MODES = ("warn", "stop", "off")  # fashioncap.collapse_guard


@dataclass
class FashionCapTrainingArguments(Seq2SeqTrainingArguments):
    """The Trainer's arguments plus the REINFORCE and generation settings: the trainer reads all from `self.args`.

    Its own fields are grouped into `SECTIONS` only for the run's saved recipe and its model card.
    """

    global_batch_size: int | None = _help(
        None, "images per optimizer step over all processes: derives gradient_accumulation_steps"
    )
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
    loss_type: str = _help(
        "sequence_sum",
        "normalisation of the REINFORCE term (part of its dose): sequence_sum (each sample's summed token "
        "log-probs) | grpo (each sample's token mean) | dapo (a token mean over the batch's samples) | dr_grpo "
        "(the sum over max_sample_tokens)",
    )
    rl_start: float = _help(
        0.0, "fraction of the steps trained by MLE alone before the REINFORCE term starts"
    )
    sample_temperature: float = _help(1.0, "temperature of the sampled captions")
    sample_top_k: int = _help(0, "0 samples from the full distribution")
    max_sample_tokens: int = _help(50, "new tokens per sampled caption at most")
    mask_truncated_completions: bool = _help(
        False, "leave sampled captions that hit max_sample_tokens before [SEP] out of the REINFORCE term"
    )
    scale_rewards: str = _help(
        "none",
        "none | group: divide each image's H advantages by their root mean square (with baseline mean: the std "
        "of its rewards, as GRPO), for rewards of mixed ranges",
    )
    kl_weight: float = _help(
        0.0, "weight of a KL penalty to the base model (the adapter disabled), logged as kl"
    )
    collapse_guard: str = _help(
        "warn",
        "warn | stop | off: check the greedy captions for repetition and runs to the length limit (every "
        "collapse_guard_steps RL steps); on collapse warn once (stop: also save a checkpoint and end the run)",
    )
    collapse_guard_steps: int = _help(
        10,
        "the guard decodes the greedy captions every N RL steps (every step when the greedy baseline draws them "
        "anyway): a greedy decode costs about what sampling does at large shape; the samples' health is logged "
        "every RL step",
    )
    log_completions_steps: int = _help(
        50,
        "every N RL steps, a table of sampled captions and their rewards to RUN/completions.jsonl (0: never)",
    )
    cuda_graphs: bool = _help(
        True, "on CUDA, replay each decoding step as a CUDA graph (sampling and eval captions); off elsewhere"
    )
    zero3_gathered_decoding: bool = _help(
        True,
        "under DeepSpeed ZeRO-3, gather the text decoder's weights once per decode (samples, greedy baseline, "
        "eval) and decode without DeepSpeed's per-module hooks; false for a decoder too large for one device "
        "(then every token gathers each module's weights and all ranks decode up to the token limit)",
    )
    num_beams: int = _help(GENERATION_DEFAULTS["num_beams"], "beams for evaluation captions")
    max_new_tokens: int = _help(
        GENERATION_DEFAULTS["max_new_tokens"], "new tokens per evaluation caption at most"
    )
    min_new_tokens: int = _help(
        GENERATION_DEFAULTS["min_new_tokens"], "new tokens per evaluation caption at least"
    )
    overwrite_output_dir: bool = _help(
        False, "train into an output_dir that already holds a finished run (all_results.json), replacing it"
    )

    def __post_init__(self):
        check_ranges(self)
        super().__post_init__()
        apply_global_batch_size(self)
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
        if self.rl_weight and self.num_samples < (1 if self.baseline == "greedy" else 2):
            raise ValueError(
                f"num_samples={self.num_samples} is too few for the {self.baseline} baseline: with one sample per "
                "image the advantage is always 0 (use num_samples >= 2, or baseline: greedy)"
            )
        if self.rl_weight and self.sample_top_k:
            raise ValueError(
                f"sample_top_k={self.sample_top_k}: REINFORCE needs the log-probabilities of the distribution the "
                "captions were drawn from, and top-k sampling changes it; use sample_top_k: 0 (and "
                "sample_temperature to sharpen)"
            )
        if self.collapse_guard_steps < 1:
            raise ValueError(f"collapse_guard_steps must be >= 1, not {self.collapse_guard_steps}")
        if self.log_completions_steps < 0:
            raise ValueError(
                f"log_completions_steps must be >= 0 (0: never), not {self.log_completions_steps}"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {self.loss_type!r}")
        if self.collapse_guard not in GUARD_MODES:
            raise ValueError(
                f"collapse_guard must be one of {', '.join(GUARD_MODES)}, not {self.collapse_guard!r}"
            )
        if self.scale_rewards not in ("none", "group"):
            raise ValueError(f"scale_rewards must be none or group, not {self.scale_rewards!r}")
        if self.scale_rewards == "group" and self.num_samples < 2:
            raise ValueError(
                "scale_rewards: group needs num_samples >= 2 (one sample's scale is its own advantage)"
            )

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
    # keys the command line set to another value than the recipe file's (paths given there are never built)
    from_command_line: frozenset[str] = frozenset()

    def to_dict(self) -> dict:
        """Everything a later `eval` or model card needs; never the Hub token, nor how this run was started."""
        sectioned = {key for keys in SECTIONS.values() for key in keys}
        training = {
            k: v
            for k, v in self.training.to_dict().items()
            if "token" not in k and k not in sectioned and k != "overwrite_output_dir"
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
            raise ConfigError(
                f"unexpected argument {token!r} on the command line: overrides look like --key value"
            )
        else:
            values[key].append(token)
    return {k: (True if not v else v[0] if len(v) == 1 else v) for k, v in values.items()}


def _read_recipe(config_path: Path) -> dict:
    if not config_path.is_file():
        raise missing_path("recipe", config_path)
    try:
        loaded = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{config_path} is not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{config_path}: a recipe is a flat mapping of keys to values")
    return loaded


def _refuse_unknown_keys(mapping: dict, origin: str) -> None:
    known = _field_names()
    own = {key for keys in RECIPE_KEYS.values() for key in keys}  # suggested first: lora_rank -> lora_r
    unknown = sorted(set(mapping) - known)
    if unknown:
        named = ", ".join(key + (did_you_mean(key, own) or did_you_mean(key, known)) for key in unknown)
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {named} {origin} "
            "(`fashioncap train --help` lists the keys)"
        )


def _is_true(value) -> bool:
    return str(value).lower() in ("true", "yes", "t", "y", "1")


def _bf16_only_with_a_gpu(values: dict) -> None:
    """The GPU recipes ask for bf16, which the Trainer refuses without a GPU: train in fp32, and say so once.

    Not when the user asked for CPU training (`use_cpu`): bf16 autocast on a CPU is then what they chose."""
    if not _is_true(values.get("bf16")) or _is_true(values.get("use_cpu")):
        return
    if torch.cuda.is_available() or is_torch_bf16_gpu_available():
        return
    values["bf16"] = False
    if is_main_process():
        logger.warning(
            "bf16: true needs a GPU and there is none here: training in fp32 (--bf16 false silences this)"
        )


def _raise_on_parse_error(origin_of):
    """argparse's `error` for the recipe parser: a ConfigError naming the key and where its value came from,
    instead of printing the parser's usage (every key of the Trainer) and exiting."""

    def error(message: str):
        match = re.match(r"argument --([\w-]+)\S*: (.*)", message)
        if match is None:
            raise ConfigError(message)
        key, problem = match.groups()
        raise ConfigError(f"bad value for {key} {origin_of(key)}: {problem}")

    return error


def check_sections_agree(model: ModelArguments, training: FashionCapTrainingArguments) -> None:
    """Settings of different sections that cannot go together: ValueError naming them."""
    if training.kl_weight and model.lora_preset == "none":
        raise ValueError(
            f"kl_weight {training.kl_weight} needs a LoRA adapter (the KL is to the base model, i.e. the adapter "
            "disabled), and lora_preset is none: set a lora_preset, or kl_weight 0"
        )


def load_config(config_path: str | Path | None, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a recipe YAML and apply command-line overrides; unknown keys and bad values are errors naming them
    and where they came from (the file or the command line)."""
    config_path = Path(config_path) if config_path is not None else None
    recipe = _read_recipe(config_path) if config_path is not None else {}
    cli = _overrides(overrides or [])
    _refuse_unknown_keys(recipe, f"in {config_path}")
    _refuse_unknown_keys(cli, "on the command line")
    values = {**recipe, **cli}
    values.setdefault("output_dir", "outputs/run")
    values["remove_unused_columns"] = False  # image/text columns are processed in the collator
    if not torch.cuda.is_available():
        values.setdefault("dataloader_pin_memory", False)  # pinning needs a GPU: torch warns at every loader
    # every trainable parameter takes part in every loss (tests/test_trainer.py): DDP's search for unused ones
    # only costs a pass over the graph per step and warns that it found none
    values.setdefault("ddp_find_unused_parameters", False)
    _bf16_only_with_a_gpu(values)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # accelerate's multi-process launcher does not pass ACCELERATE_USE_CPU to the ranks: without use_cpu each
        # CPU rank would silently train alone (world size 1, no gradient all-reduce)
        values.setdefault("use_cpu", True)
    parser = HfArgumentParser(CONFIG_CLASSES)
    parser.error = _raise_on_parse_error(
        lambda key: "on the command line" if key in cli else f"in {config_path}"
    )
    try:
        model, data, training = parser.parse_args_into_dataclasses(
            args=_to_argv(values), look_for_args_file=False
        )
        check_sections_agree(model, training)
    except OutOfRangeError as err:
        origin = "on the command line" if err.key in cli else f"in {config_path}"
        raise ConfigError(f"bad value for {err.key} {origin}: {err.problem}") from err
    except ConfigError:
        raise
    except ValueError as err:  # the dataclasses' own checks (ours and the Trainer's) and check_sections_agree
        where = str(config_path) if config_path else "the command line"
        where += " with the command-line overrides" if config_path and cli else ""
        raise ConfigError(f"{where}: {err}") from err
    from_command_line = frozenset(key for key, value in cli.items() if str(value) != str(recipe.get(key)))
    return RecipeConfig(
        model,
        data,
        training,
        source=str(config_path) if config_path else None,
        from_command_line=from_command_line,
    )
