"""`fashioncap eval`: the three files, the score object of `fashioncap score`, pixels-only generation, atomicity."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from fashioncap import evaluation, inference
from fashioncap.cli import main
from fashioncap.evaluation import predict_split
from fashioncap.inference import load_captioner
from fashioncap.metrics.files import score_files
from fashioncap.rundir import EVAL_FILES, default_eval_dir

FAST = {"num_beams": 1, "max_new_tokens": 4, "min_new_tokens": 1}
FAST_FLAGS = ["--num-beams", "1", "--max-new-tokens", "4", "--min-new-tokens", "1", "--batch-size", "4"]


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, synthetic_dir, tmp_path_factory):
    """One `fashioncap eval` run: (out dir, exit code, stdout)."""
    out_dir = tmp_path_factory.mktemp("run") / "eval"
    args = ["--model-dir", str(tiny_model_dir), "--data", str(synthetic_dir), "--out-dir", str(out_dir)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["eval", *args, *FAST_FLAGS])
    return out_dir, code, stdout.getvalue()


def test_eval_writes_predictions_metrics_and_table(evaluated, synthetic_dir, tiny_model_dir, table_row):
    out_dir, code, stdout = evaluated
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(EVAL_FILES)
    assert not list(out_dir.parent.glob(".*")), "no temporary directory left beside the eval dir"

    predictions = json.loads((out_dir / "predictions.json").read_text())
    test = json.loads((synthetic_dir / "annotations" / "test.json").read_text())
    assert [p["image_id"] for p in predictions] == [im["id"] for im in test["images"]]
    assert all(set(p) == {"image_id", "caption"} and isinstance(p["caption"], str) for p in predictions)

    metrics = json.loads((out_dir / "metrics.json").read_text())
    scored = score_files(
        synthetic_dir / "annotations" / "test.json", out_dir / "predictions.json", per_image=True
    )
    per_image = scored.pop("per_image")
    assert {k: metrics[k] for k in scored} == scored
    assert metrics["SPICE"] is None and "SPICE" in metrics["unavailable"]
    assert {"ALS", "SLS"} <= set(metrics) and metrics["num_images"] == len(predictions)
    assert (metrics["split"], metrics["data_dir"], metrics["model_dir"]) == (
        "test",
        str(synthetic_dir),
        str(tiny_model_dir),
    )
    assert metrics["generation"] == {"num_beams": 1, "max_new_tokens": 4, "min_new_tokens": 1}
    assert metrics["versions"]["transformers"] and metrics["versions"]["pycocoevalcap"]
    saved = json.loads((out_dir / "per_image.json").read_text())
    assert saved == {metric: {str(k): v for k, v in scores.items()} for metric, scores in per_image.items()}
    assert set(saved["CIDEr"]) == {str(p["image_id"]) for p in predictions}
    health = metrics["health"]
    assert health["num_captions"] == len(predictions) and health["reference_mean_length"] > 8
    assert 0 <= health["length_limit_share"] <= 1 and health["mean_length"] <= 4

    table = (out_dir / "metrics.md").read_text()
    cells = table_row(table, Path(tiny_model_dir).name)
    assert cells["SPICE"] == "n/a" and cells["CIDEr"] == f"{metrics['CIDEr']:.4f}"
    assert "| BLEU-4 |" in stdout, "the table is printed too"


def test_generation_never_sees_the_references(tiny_model_dir, synthetic_dir, tmp_path, monkeypatch):
    """Same captions when every reference is replaced, and `generate` receives pixels and settings only."""
    altered = shutil.copytree(synthetic_dir, tmp_path / "altered")
    coco = json.loads((altered / "annotations" / "test.json").read_text())
    for i, ann in enumerate(coco["annotations"]):
        ann.update(caption=f"zebra {i} " * 3, attributes=["zebra"], category=1)
    (altered / "annotations" / "test.json").write_text(json.dumps(coco))

    model, processor = load_captioner(str(tiny_model_dir))
    seen = []
    original = inference.caption_pixels

    def recording_generate(model, **kwargs):
        seen.append(set(kwargs))
        return original(model, **kwargs)

    monkeypatch.setattr(inference, "caption_pixels", recording_generate)
    before = predict_split(model, processor, synthetic_dir, "test", 4, **FAST)[0]
    after = predict_split(model, processor, altered, "test", 4, **FAST)[0]
    assert before == after
    assert seen and all(keys == {"pixel_values", *FAST} for keys in seen)


def test_eval_warns_on_one_line_when_the_captions_collapse(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from fashioncap.data import build_synthetic

    data = build_synthetic(tmp_path / "data", train=0, val=0, test=12, pretrain=0)
    monkeypatch.setattr(
        evaluation,
        "predict_split",
        lambda model, processor, data_dir, split, batch_size, **_: (
            [{"image_id": i, "caption": "a pair of red striped tees"} for i in range(1, 13)],
            [True] * 12,
        ),
    )
    metrics = evaluation.evaluate_run(str(tiny_model_dir), data, out_dir=tmp_path / "eval", **FAST)
    assert metrics["health"]["collapsed"] and metrics["health"]["top5_share"] == 1.0
    assert metrics["health"]["length_limit_share"] == 1.0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "collapsed" in line]
    assert warnings == [
        "WARNING: the captions collapsed: of 12, 100% run to the length limit ('health' in metrics.json; in "
        "training, turn rl_weight down or use loss_type: grpo)"
    ]
    assert metrics["health"]["template_reuse"], "one caption for every image: reported as template reuse too"


def test_interrupted_eval_keeps_the_previous_results(evaluated, tiny_model_dir, synthetic_dir, monkeypatch):
    out_dir, _, _ = evaluated
    before = {name: (out_dir / name).read_bytes() for name in EVAL_FILES}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fashioncap.evaluation.score_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate_run(str(tiny_model_dir), synthetic_dir, out_dir=out_dir, batch_size=8, **FAST)
    assert {name: (out_dir / name).read_bytes() for name in EVAL_FILES} == before
    assert not list(out_dir.parent.glob(".*")), "the partial eval dir is removed"


def test_eval_refuses_an_out_dir_holding_other_files(tiny_model_dir, synthetic_dir, tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    args = [
        "eval",
        "--model-dir",
        str(tiny_model_dir),
        "--data",
        str(synthetic_dir),
        "--out-dir",
        str(tmp_path),
    ]
    assert main(args) == 2
    assert "mine.txt" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_eval_of_an_unavailable_hub_model_is_a_clear_error(synthetic_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [
        "eval",
        "--model-dir",
        "nobody/no-such-model",
        "--data",
        str(synthetic_dir),
        "--out-dir",
        str(tmp_path / "e"),
    ]
    assert main(args) == 2
    assert "nobody/no-such-model" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_default_eval_dir_is_one_per_split():
    assert default_eval_dir("Salesforce/blip-image-captioning-large") == Path(
        "outputs/eval/Salesforce--blip-image-captioning-large/test"
    )
    assert default_eval_dir(str(Path(__file__).parent), "val") == Path(__file__).parent / "eval" / "val"


def test_eval_scores_with_the_runs_category_names(tiny_model_dir, tmp_path, monkeypatch):
    """Issue 26: a run trained with `category_names` (Hub data) scores SLS and the category rewards with that
    word map, as training did, not with the data dir's categories.json."""
    from fashioncap.data import build_synthetic

    data = build_synthetic(tmp_path / "data", train=0, val=0, test=12, pretrain=0)
    annotations = json.loads((data / "annotations/test.json").read_text())["annotations"]
    category_of = {a["image_id"]: a["category"] for a in annotations}
    names = tmp_path / "names.json"
    names.write_text(json.dumps({str(c): f"zebra{c}" for c in set(category_of.values())}))
    run = shutil.copytree(tiny_model_dir, tmp_path / "run")
    recipe = {
        "data": {"category_names": str(names)},
        "reward": {"reward_funcs": ["fashioncap.rewards.sls_reward"]},
    }
    (run / "fashioncap_config.json").write_text(json.dumps(recipe))
    monkeypatch.setattr(
        evaluation,
        "predict_split",
        lambda model, processor, data_dir, split, batch_size, **_: (
            [{"image_id": i, "caption": f"a zebra{c} for you"} for i, c in sorted(category_of.items())],
            [False] * 12,
        ),
    )
    with_names = evaluation.evaluate_run(str(run), data, out_dir=tmp_path / "eval", **FAST)
    assert with_names["SLS"] == 1.0 and with_names["reward/sls_reward"] == 1.0
    (run / "fashioncap_config.json").write_text(json.dumps({**recipe, "data": {}}))
    with_data_dir = evaluation.evaluate_run(str(run), data, out_dir=tmp_path / "eval", **FAST)
    assert with_data_dir["SLS"] == 0.0 and with_data_dir["reward/sls_reward"] == 0.0, "no zebra in the data's"


def test_length_limit_hits_are_counted_on_the_generated_ids(tiny_model_dir, synthetic_dir):
    """Issue 26: a caption ran out of new tokens when its generated ids hold no [SEP], whatever its text
    re-tokenises to: here every generated token is [UNK], which the decoded text drops."""
    import torch

    model, processor = load_captioner(str(tiny_model_dir))
    tokenizer = processor.tokenizer
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[model.config.text_config.sep_token_id] = -1e4
        model.text_decoder.cls.predictions.bias[tokenizer.unk_token_id] = 1e4
    predictions, limit_hits = predict_split(model, processor, synthetic_dir, "test", 4, **FAST)
    assert [p["caption"] for p in predictions] == [""] * len(predictions)
    assert limit_hits == [True] * len(predictions), "4 ids each, none of them [SEP]"
