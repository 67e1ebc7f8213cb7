"""Train one trial from a recipe: data, model + LoRA, FashionCapTrainer, test-set metrics, model card, push.

The command line is `fashioncap train` / `accelerate launch recipes/trialN.py` (fashioncap/commands/train.py).
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from transformers import TrainerCallback, set_seed

from fashioncap import rundir
from fashioncap.configs import RecipeConfig, batch_arithmetic, load_config
from fashioncap.data.coco import (
    group_references,
    load_captions,
    load_categories,
    read_categories,
    with_references,
)
from fashioncap.data.synthetic import ensure_synthetic
from fashioncap.errors import ConfigError, MissingPathError, OutputExistsError, missing_path
from fashioncap.hub import push, require_token, write_model_card
from fashioncap.io_utils import write_json_atomic
from fashioncap.metrics import compute_caption_metrics
from fashioncap.models import (
    build_tiny_model,
    family_of,
    load_model_and_processor,
    lora_targets,
    set_caption_prompt,
)
from fashioncap.models.lora import apply_lora, continue_from_run
from fashioncap.models.source import check_hub_model, is_hub_id
from fashioncap.ranks import agreed_by_any_rank
from fashioncap.rewards import reward_name
from fashioncap.text import caption_vocabulary, decode_captions
from fashioncap.trainer import FashionCapTrainer, build_trainer

logger = logging.getLogger("fashioncap")

FACAD_HOWTO = (
    "build it with `fashioncap data facad --meta meta_all_129927.json --images IMG_ROOT --out {data_dir} "
    "--download` (README: 'Training on FACAD'), or point --data_dir at your own COCO-format data dir"
)
SYNTHETIC_HOWTO = (
    "the synthetic set is built on its own only at the recipe's data_dir; build one elsewhere with "
    "`fashioncap data synthetic --out {data_dir}`"
)


class PreemptionCallback(TrainerCallback):
    """On SIGTERM (what preemptible machines send), save a checkpoint at the end of the current step and stop."""

    def __init__(self):
        self.preempted = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logger.warning("SIGTERM received: saving a checkpoint after this step, then stopping")
        self.preempted = True

    def on_step_end(self, args, state, control, **kwargs):
        # A signal reaches each rank at its own moment: the ranks agree (any rank preempted) at every step end,
        # so all of them save the same step together instead of one saving while another waits in all-reduce.
        if agreed_by_any_rank(self.preempted, args.device):
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
        return control


class SelectAfterRLStart(TrainerCallback):
    """With `load_best_model_at_end`, no checkpoint from before the REINFORCE term starts (`rl_start`) can be the
    best: RL trades CIDEr for ALS/SLS, so an MLE-only checkpoint would win the selection and the trial's scores.

    Such an evaluation's selection metric is set to the worst value after it is logged, before the Trainer
    compares it; when no evaluation follows the RL start, nothing is selected and the final model is scored.
    """

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        key = args.metric_for_best_model or ""
        key = key if key.startswith("eval_") else f"eval_{key}"
        # the step that made checkpoint N ran at global_step N - 1: the trainer's RL test saw that value
        before_rl = state.global_step - 1 < args.rl_start * state.max_steps
        if args.load_best_model_at_end and args.rl_weight and before_rl and metrics and key in metrics:
            metrics[key] = float("-inf") if args.greater_is_better else float("inf")


# --- inputs -----------------------------------------------------------------------------------------------------


def prepare_data(config: RecipeConfig) -> str:
    """The data dir, built on first use when the recipe allows it (the demo), else a clear error.

    Only the recipe's own data_dir is built: a path given on the command line that does not exist is a typo
    until shown otherwise, and building a data set there would hide it."""
    data = config.data
    path = Path(data.data_dir)
    if data.data_from_hub or (path / "annotations").is_dir():
        return data.data_dir
    given = "data_dir" in config.from_command_line
    if data.build_synthetic_if_missing and not given:
        logger.info("building the synthetic fashion set into %s", path)
        ensure_synthetic(path)
        return data.data_dir
    howto = (SYNTHETIC_HOWTO if data.build_synthetic_if_missing else FACAD_HOWTO).format(data_dir=path)
    if not path.exists():
        raise missing_path("data_dir", path, howto)
    raise MissingPathError(f"no data at {path}: expected annotations/, images/ and categories.json; {howto}")


def category_wordmap(config: RecipeConfig, data_dir: str) -> dict[int, list[str]]:
    """The category names SLS matches: the recipe's `category_names` file, else the data dir's categories.json,
    else (Hub data) the categories.json of the data set's repo. Without any, SLS as a reward is refused here,
    before anything is loaded or trained: it would fail at the first RL step."""
    data, training = config.data, config.training
    if data.category_names:
        return read_categories(data.category_names)
    if not data.data_from_hub:
        return load_categories(data_dir)
    try:
        return read_categories(hf_hub_download(data.data_dir, "categories.json", repo_type="dataset"))
    except (EntryNotFoundError, OSError) as err:
        reason = f"the Hub data set {data.data_dir} gave no categories.json ({type(err).__name__})"
    uses_sls = any(reward_name(spec) in ("sls", "sls_reward") for spec in training.reward_funcs)
    if training.rl_weight and uses_sls:
        raise ConfigError(
            f"the SLS reward needs category names and {reason}: set category_names to a categories.json "
            '(id -> name or list of names, e.g. {"1": ["tee", "t shirt"], "2": "dress"})'
        )
    logger.warning("%s: SLS is 0 for every caption", reason)
    return {}


def prepare_base_model(config: RecipeConfig) -> None:
    """Train the recipe's base model first when it is a local dir that does not exist yet (the demo's tiny base).

    Only at the recipe's own model_name_or_path: one given on the command line must exist, locally or (an
    `owner/name`) on the Hub, asked now: before the data is loaded, and naming both places when it is in neither."""
    model = config.model
    if model.base_recipe and not Path(model.model_name_or_path).exists():
        if "model_name_or_path" in config.from_command_line:
            if is_hub_id(model.model_name_or_path):
                check_hub_model(model.model_name_or_path)
                return
            raise missing_path(
                "model_name_or_path",
                model.model_name_or_path,
                f"the base ({model.base_recipe}) is built on its own only at the recipe's model_name_or_path",
            )
        logger.info(
            "base model %s is missing: training it from %s", model.model_name_or_path, model.base_recipe
        )
        train(load_config(model.base_recipe, ["--output_dir", model.model_name_or_path,
                                              "--data_dir", config.data.data_dir]))  # fmt: skip


def load_splits(config: RecipeConfig, data_dir: str):
    """(all splits, the training rows with their image's `references`, the eval images with their references),
    capped as the recipe asks."""
    data = config.data
    datasets = load_captions(data_dir)
    for split in (data.train_split, data.eval_split):
        if split not in datasets:
            raise ConfigError(
                f"{data_dir} has no '{split}' split (has: {sorted(datasets)}): set train_split/eval_split"
            )
    train_set = with_references(datasets[data.train_split])  # before capping: every caption of each image
    if data.max_train_samples:
        train_set = train_set.select(range(min(data.max_train_samples, len(train_set))))
    eval_set = group_references(datasets[data.eval_split])
    if data.max_eval_samples:
        eval_set = eval_set.select(range(min(data.max_eval_samples, len(eval_set))))
    return datasets, train_set, eval_set


def build_model(config: RecipeConfig, datasets):
    """The captioner (from the Hub or a local dir, of the family its config names, or the tiny offline one)
    with the trial's LoRA adapters."""
    args = config.model
    if args.tiny_model:
        words = caption_vocabulary(c for split in datasets.values() for c in split["caption"])
        model, processor = build_tiny_model(words, seed=config.training.seed, family_name=args.tiny_family)
        if args.label_smoothing is not None:
            family_of(model).set_label_smoothing(model, args.label_smoothing)
        set_caption_prompt(model, processor, args.caption_prompt)
    else:
        model, processor = load_model_and_processor(
            args.model_name_or_path, label_smoothing=args.label_smoothing, caption_prompt=args.caption_prompt
        )
    if args.lora_preset != "none":
        target = lora_targets(model, args.lora_preset, args.vision_lora_layers)
        model = apply_lora(
            model, target, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, bias=args.lora_bias,
            modules_to_save=args.lora_modules_to_save,
        )  # fmt: skip
        if args.init_from_run:
            continue_from_run(model, args.init_from_run)
    elif args.init_from_run:
        raise ConfigError("init_from_run continues a run's LoRA adapter: it needs a lora_preset (not none)")
    return model, processor


def resume_checkpoint(training) -> str | None:
    """`--resume_from_checkpoint true` means the last COMPLETE checkpoint: a kill during a save can leave a newer
    `checkpoint-N` without its trainer_state.json, which the Trainer's own choice would pick and fail on."""
    value = training.resume_from_checkpoint
    if value is None or str(value).lower() != "true":
        return value
    complete = [
        p for p in Path(training.output_dir).glob("checkpoint-*") if (p / "trainer_state.json").is_file()
    ]
    if not complete:
        logger.warning("no complete checkpoint in %s: starting from scratch", training.output_dir)
        return None
    return str(max(complete, key=lambda p: int(p.name.rsplit("-", 1)[1])))


def make_compute_metrics(processor, references, category_wordmap):
    """Score generated ids against the eval split's references, keyed by image id (distributed duplicates dropped).

    Scored once, on the main process (one tokenizer and METEOR JVM, one SPICE run), and the result shared with
    every rank (each needs it, e.g. to pick the best checkpoint)."""
    refs = {row["image_id"]: row for row in references.select_columns(["image_id", "references", "attributes",
                                                                         "category"])}  # fmt: skip

    def compute_metrics(eval_pred):
        state = PartialState()
        shared = [score(eval_pred) if state.is_main_process else None]
        if state.num_processes > 1:
            broadcast_object_list(shared)
        return shared[0]

    def score(eval_pred):
        ids = eval_pred.predictions.copy()
        ids[ids < 0] = processor.tokenizer.pad_token_id
        captions = decode_captions(processor, ids)
        predictions = {}
        for image_id, caption in zip(eval_pred.label_ids.reshape(-1).tolist(), captions, strict=True):
            predictions.setdefault(int(image_id), caption)
        scores = compute_caption_metrics(
            predictions,
            {i: refs[i]["references"] for i in predictions},
            attributes={i: refs[i]["attributes"] for i in predictions},
            categories={i: refs[i]["category"] for i in predictions},
            category_wordmap=category_wordmap,
        )
        return {k: v for k, v in scores.items() if isinstance(v, int | float)}

    return compute_metrics


# --- the run ----------------------------------------------------------------------------------------------------


def fit(trainer: FashionCapTrainer, training) -> dict:
    """Train (resuming when asked); a SIGTERM saves a checkpoint and exits 143 so a scheduler can requeue; a
    collapse under `collapse_guard: stop` saved a checkpoint and ends the run with a CollapseError."""
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(training))
    if preemption.preempted:
        logger.warning(
            "stopped by SIGTERM at step %d; resume with --resume_from_checkpoint", trainer.state.global_step
        )
        sys.exit(143)
    if trainer.collapse_guard.stopped:
        raise trainer.collapse_guard.error(training.output_dir)
    return result.metrics


def scored_checkpoint(trainer: FashionCapTrainer) -> str:
    """Which weights the run saved and scored: 'final (step N)' or 'best by eval_CIDEr (step N)'."""
    args, state = trainer.args, trainer.state
    if args.load_best_model_at_end and state.best_model_checkpoint is not None:
        step = Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1]
        return f"best by {args.metric_for_best_model} (step {step})"
    return f"final (step {state.global_step})"


def save_run(trainer: FashionCapTrainer, config: RecipeConfig) -> Path:
    """The adapter (or model) with its processor, the log history and the resolved recipe with the model's
    family (what the model card's snippets load it with)."""
    output_dir = Path(config.training.output_dir)
    trainer.save_model(str(output_dir))
    trainer.save_state()  # trainer_state.json: the log history the report's training curves read
    if trainer.is_world_process_zero():
        rundir.store_base_relative(output_dir)  # the run then works from any directory, and when moved
        family = family_of(trainer.model).NAME
        write_json_atomic(output_dir / rundir.RUN_CONFIG, {**config.to_dict(), rundir.FAMILY: family})
    return output_dir


def publish(output_dir: Path, config: RecipeConfig, metrics: dict) -> None:
    """all_results.json and the model card; the push to the Hub when the recipe asks for it (main process)."""
    training = config.training
    write_json_atomic(output_dir / rundir.RESULTS, {**metrics, "versions": rundir.library_versions()})
    write_model_card(
        output_dir,
        rundir.run_config(output_dir),
        metrics.get("test"),
        checkpoint=metrics.get("scored_checkpoint"),
    )
    if training.push_to_hub:
        push(output_dir, training.hub_model_id or output_dir.name, private=bool(training.hub_private_repo))


def refuse_a_finished_run(training) -> None:
    """A finished run (all_results.json) is only trained over on request: resumed, or overwritten."""
    output_dir = Path(training.output_dir)
    if (output_dir / rundir.RESULTS).is_file() and not (
        training.resume_from_checkpoint or training.overwrite_output_dir
    ):
        raise OutputExistsError(
            f"output_dir {output_dir} already holds a finished run ({rundir.RESULTS}): pick another "
            "--output_dir, or pass --overwrite_output_dir true to train over it (or --resume_from_checkpoint to "
            "continue it)"
        )


def train(config: RecipeConfig) -> dict:
    """Train, save the adapter (or model) with its processor, score the test split, write the card, push."""
    training, data = config.training, config.data
    refuse_a_finished_run(training)
    if training.push_to_hub:
        require_token()  # before hours of training, not after
    set_seed(training.seed)
    if torch.cuda.device_count() == 0 and training.world_size > 1:
        torch.set_num_threads(
            1
        )  # CPU DDP ranks: more threads per rank was 3-15x slower (docs/stack-traps.md)
    data_dir = prepare_data(config)  # first: the base model trains on the same data dir
    wordmap = category_wordmap(config, data_dir)
    prepare_base_model(config)
    datasets, train_set, eval_set = load_splits(config, data_dir)
    model, processor = build_model(config, datasets)
    trainer = build_trainer(
        model, processor, training, train_set, eval_set, category_wordmap=wordmap,
        max_length=data.max_length, augment=data.augment,
        compute_metrics=make_compute_metrics(processor, eval_set, wordmap),
    )  # fmt: skip
    trainer.add_callback(SelectAfterRLStart())
    if trainer.is_world_process_zero():
        logger.info("images per optimizer step: %s", batch_arithmetic(training))
    metrics = {"train": fit(trainer, training)}
    metrics["scored_checkpoint"] = scored_checkpoint(trainer)
    output_dir = save_run(trainer, config)
    if training.do_predict and data.test_split in datasets:
        test_set = group_references(datasets[data.test_split])
        trainer.compute_metrics = make_compute_metrics(processor, test_set, wordmap)
        metrics["test"] = trainer.evaluate(test_set, metric_key_prefix="test")
    if trainer.is_world_process_zero():
        publish(output_dir, config, metrics)
    return metrics
