"""Train one trial from a recipe: data, model + LoRA, FashionCapTrainer, test-set metrics, model card, push.

The command line is `fashioncap train` / `accelerate launch recipes/trialN.py` (fashioncap/commands/train.py).
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed

from fashioncap import rundir
from fashioncap.configs import RecipeConfig, load_config
from fashioncap.data import ensure_synthetic, group_references, load_captions, load_categories
from fashioncap.hub import push, write_model_card
from fashioncap.io_utils import write_json_atomic
from fashioncap.metrics import compute_caption_metrics
from fashioncap.modeling import (
    apply_lora,
    build_tiny_blip,
    caption_vocabulary,
    load_model_and_processor,
    lora_target_regex,
)
from fashioncap.trainer import FashionCapTrainer, build_trainer

logger = logging.getLogger("fashioncap")

FACAD_HOWTO = (
    "Build it first, e.g.\n"
    "  fashioncap data facad --meta meta_all_129927.json --images IMG_ROOT --out {data_dir} --download\n"
    "(see README: 'Training on FACAD'), or point --data_dir at your own COCO-format data dir."
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
        if self.preempted:
            control.should_save = True
            control.should_training_stop = True
        return control


# --- inputs -----------------------------------------------------------------------------------------------------


def prepare_data(config: RecipeConfig) -> str:
    """The data dir, built on first use when the recipe allows it (the demo), else a clear error."""
    data = config.data
    path = Path(data.data_dir)
    if data.data_from_hub or (path / "annotations").is_dir():
        return data.data_dir
    if data.build_synthetic_if_missing:
        logger.info("building the synthetic fashion set into %s", path)
        ensure_synthetic(path)
        return data.data_dir
    raise SystemExit(
        f"no data at {data.data_dir}: expected annotations/, images/ and categories.json.\n"
        + FACAD_HOWTO.format(data_dir=data.data_dir)
    )


def prepare_base_model(config: RecipeConfig) -> None:
    """Train the recipe's base model first when it is a local dir that does not exist yet (the demo's tiny base)."""
    model = config.model
    if model.base_recipe and not Path(model.model_name_or_path).exists():
        logger.info(
            "base model %s is missing: training it from %s", model.model_name_or_path, model.base_recipe
        )
        train(load_config(model.base_recipe, ["--output_dir", model.model_name_or_path,
                                              "--data_dir", config.data.data_dir]))  # fmt: skip


def load_splits(config: RecipeConfig, data_dir: str):
    """(all splits, the training rows, the eval images with their references), capped as the recipe asks."""
    data = config.data
    datasets = load_captions(data_dir)
    for split in (data.train_split, data.eval_split):
        if split not in datasets:
            raise SystemExit(f"{data_dir} has no '{split}' split (has: {sorted(datasets)})")
    train_set = datasets[data.train_split]
    if data.max_train_samples:
        train_set = train_set.select(range(min(data.max_train_samples, len(train_set))))
    eval_set = group_references(datasets[data.eval_split])
    if data.max_eval_samples:
        eval_set = eval_set.select(range(min(data.max_eval_samples, len(eval_set))))
    return datasets, train_set, eval_set


def build_model(config: RecipeConfig, datasets):
    """BLIP (from the Hub or a local dir, or the tiny offline one) with the trial's LoRA adapters."""
    args = config.model
    if args.tiny_model:
        words = caption_vocabulary(c for split in datasets.values() for c in split["caption"])
        model, processor = build_tiny_blip(words, seed=config.training.seed)
        if args.label_smoothing is not None:
            model.config.text_config.label_smoothing = args.label_smoothing
    else:
        model, processor = load_model_and_processor(
            args.model_name_or_path, label_smoothing=args.label_smoothing
        )
    if args.lora_preset != "none":
        target = lora_target_regex(
            args.lora_preset, model.config.vision_config.num_hidden_layers, args.vision_lora_layers
        )
        model = apply_lora(
            model, target, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, bias=args.lora_bias,
            modules_to_save=args.lora_modules_to_save,
        )  # fmt: skip
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
    """Score generated ids against the eval split's references, keyed by image id (distributed duplicates dropped)."""
    refs = {row["image_id"]: row for row in references.select_columns(["image_id", "references", "attributes",
                                                                         "category"])}  # fmt: skip

    def compute_metrics(eval_pred):
        ids = eval_pred.predictions.copy()
        ids[ids < 0] = processor.tokenizer.pad_token_id
        captions = processor.batch_decode(ids, skip_special_tokens=True)
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
    """Train (resuming when asked); a SIGTERM saves a checkpoint and exits 143 so a scheduler can requeue."""
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(training))
    if preemption.preempted:
        logger.warning(
            "stopped by SIGTERM at step %d; resume with --resume_from_checkpoint", trainer.state.global_step
        )
        sys.exit(143)
    return result.metrics


def save_run(trainer: FashionCapTrainer, config: RecipeConfig) -> Path:
    """The adapter (or model) with its processor, the log history and the resolved recipe."""
    output_dir = Path(config.training.output_dir)
    trainer.save_model(str(output_dir))
    trainer.save_state()  # trainer_state.json: the log history the report's training curves read
    if trainer.is_world_process_zero():
        write_json_atomic(output_dir / rundir.RUN_CONFIG, config.to_dict())
    return output_dir


def publish(output_dir: Path, config: RecipeConfig, metrics: dict) -> None:
    """all_results.json and the model card; the push to the Hub when the recipe asks for it (main process)."""
    training = config.training
    write_json_atomic(output_dir / rundir.RESULTS, metrics)
    write_model_card(output_dir, config.to_dict(), metrics.get("test"))
    if training.push_to_hub:
        push(output_dir, training.hub_model_id or output_dir.name, private=bool(training.hub_private_repo))


def train(config: RecipeConfig) -> dict:
    """Train, save the adapter (or model) with its processor, score the test split, write the card, push."""
    training, data = config.training, config.data
    set_seed(training.seed)
    if torch.cuda.device_count() == 0 and training.world_size > 1:
        torch.set_num_threads(
            1
        )  # CPU DDP ranks: more threads per rank was 3-15x slower (docs/stack-traps.md)
    prepare_base_model(config)
    data_dir = prepare_data(config)
    datasets, train_set, eval_set = load_splits(config, data_dir)
    wordmap = {} if data.data_from_hub else load_categories(data_dir)
    model, processor = build_model(config, datasets)
    trainer = build_trainer(
        model, processor, training, train_set, eval_set, category_wordmap=wordmap,
        max_length=data.max_length, augment=data.augment,
        compute_metrics=make_compute_metrics(processor, eval_set, wordmap),
    )  # fmt: skip
    metrics = {"train": fit(trainer, training)}
    output_dir = save_run(trainer, config)
    if training.do_predict and data.test_split in datasets:
        test_set = group_references(datasets[data.test_split])
        trainer.compute_metrics = make_compute_metrics(processor, test_set, wordmap)
        metrics["test"] = trainer.evaluate(test_set, metric_key_prefix="test")
    if trainer.is_world_process_zero():
        publish(output_dir, config, metrics)
    return metrics
