"""Training you can watch: RL's sampled-caption tables (RUN/completions.jsonl) and TensorBoard, offline."""

from __future__ import annotations

import html
import json

import torch

from fashioncap.cli import main
from fashioncap.completions import completions_table, read_completions, table_markdown

RECIPE = """\
tiny_model: true
lora_preset: decoder
lora_r: 4
data_dir: {data_dir}
max_length: 20
output_dir: {output_dir}
max_steps: 5
per_device_train_batch_size: 4
reward_funcs: [sls, repetition]
rl_weight: 1.0
num_samples: 2
max_sample_tokens: 6
log_completions_steps: 2
logging_steps: 1
report_to: tensorboard
eval_strategy: "no"
save_strategy: "no"
do_predict: false
disable_tqdm: true
dataloader_num_workers: 0
"""


def test_a_table_holds_each_images_samples_rewards_baseline_and_advantage():
    rewards = {"als": torch.tensor([0.5, 0.0, 1.0, 1.0]), "sls": torch.tensor([1.0, 0.0, 0.0, 1.0])}
    total = rewards["als"] + rewards["sls"]
    baseline = torch.tensor([0.75, 0.75, 1.5, 1.5])
    captions = ["a red dress", "a hat", "blue jeans", "blue jeans with pockets"]
    table = completions_table(
        7, torch.tensor([11, 12]), ["ref a", "ref b"], captions, rewards, total, baseline
    )
    assert table["step"] == 7 and [i["image_id"] for i in table["images"]] == [11, 12]
    first = table["images"][0]
    assert first["reference"] == "ref a" and [s["caption"] for s in first["samples"]] == captions[:2]
    assert first["samples"][0] == {
        "caption": "a red dress", "rewards": {"als": 0.5, "sls": 1.0}, "total": 1.5, "baseline": 0.75,
        "advantage": 0.75,
    }  # fmt: skip
    markdown = table_markdown(table)
    assert "| image | caption | als | sls | total | baseline | advantage |" in markdown
    assert "#12 (reference: ref b) | blue jeans | 1.000 | 0.000 | 1.000 | 1.500 | -0.500 |" in markdown
    # Issue 26: a sample the truncation mask left out of the REINFORCE term shows the advantage it had: 0
    keep = torch.tensor([True, False, True, True])
    masked = completions_table(
        7, torch.tensor([11, 12]), ["ref a", "ref b"], captions, rewards, total, baseline, keep
    )
    assert [s["advantage"] for i in masked["images"] for s in i["samples"]] == [0.75, 0.0, -0.5, 0.5]
    assert masked["images"][0]["samples"][1]["total"] - masked["images"][0]["samples"][1]["baseline"] == -0.75


def test_rl_training_writes_completion_tables_and_tensorboard_offline(synthetic_dir, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(data_dir=synthetic_dir, output_dir=run))
    assert main(["train", "--config", str(recipe)]) == 0
    tables = read_completions(run)
    assert [t["step"] for t in tables] == [0, 2, 4], "the first RL step, then every log_completions_steps"
    references: dict[int, set[str]] = {}
    for annotation in json.loads((synthetic_dir / "annotations/train.json").read_text())["annotations"]:
        references.setdefault(annotation["image_id"], set()).add(annotation["caption"])
    for table in tables:
        assert 1 <= len(table["images"]) <= 3
        for image in table["images"]:
            assert image["reference"] in references[image["image_id"]]
            assert len(image["samples"]) == 2
            for sample in image["samples"]:
                assert set(sample["rewards"]) == {"sls", "repetition"}
                assert abs(sample["advantage"] - (sample["total"] - sample["baseline"])) < 1e-3
    (events,) = list((run / "runs").glob("*/events.out.tfevents.*"))
    log = EventAccumulator(str(events.parent), size_guidance={"tensors": 0}).Reload()
    assert {"train/reward/total", "train/reward/sls", "train/loss/rl"} <= set(log.Tags()["scalars"])
    texts = [t for t in log.Tags()["tensors"] if "completions" in t]
    assert texts and len(log.Tensors(texts[0])) == 3
    report = tmp_path / "report"
    assert main(["report", str(run), "--out", str(report)]) == 0
    page = (report / "report.html").read_text()
    section = page.split("Sampled captions during RL", 1)[1]
    assert "first table (step 0)" in section and "last table (step 4)" in section
    first, last = section.split("last table (step 4)", 1)[1].split('<td class="completions">')[1:3]
    assert html.escape(tables[0]["images"][0]["samples"][0]["caption"]) in first
    assert html.escape(tables[-1]["images"][0]["samples"][0]["caption"]) in last


def test_report_to_trackio_logs_offline_with_the_tables(synthetic_dir, tmp_path, monkeypatch):
    """Trackio keeps its runs in a local SQLite database (TRACKIO_DIR): nothing goes to the Hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    import trackio.utils

    monkeypatch.setattr(trackio.utils, "TRACKIO_DIR", tmp_path / "trackio")
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    text = RECIPE.format(data_dir=synthetic_dir, output_dir=run)
    text = text.replace("report_to: tensorboard", "report_to: trackio").replace(
        "max_steps: 5", "max_steps: 3"
    )
    recipe.write_text(text + "project: fashioncap-test\n")
    assert main(["train", "--config", str(recipe)]) == 0
    tables = read_completions(run)
    assert [t["step"] for t in tables] == [0, 2]
    stored = b"".join(p.read_bytes() for p in (tmp_path / "trackio").rglob("*") if p.is_file())
    assert b"train/reward/total" in stored
    sampled = {s["caption"] for t in tables for i in t["images"] for s in i["samples"]}
    assert any(caption.encode() in stored for caption in sampled), "the tables reach Trackio"
