"""Security (issue 7): data paths stay in the data dir, no remote code or unsafe deserialisation, weights as
safetensors, and a planted Hub token never reaches output, logs, configs, cards or uploaded files.

The run under test is a real `fashioncap train --config` (tiny recipe, 2 steps, one checkpoint) with HF_TOKEN in
its environment AND `hub_token` in its recipe, the two ways a user can hand it a token.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_plantedTOKENforSECURITYtestsXYZ0123456789"
RECIPE = """\
tiny_model: true
lora_preset: decoder
lora_r: 4
data_dir: {data_dir}
max_length: 40
output_dir: {output_dir}
seed: 0
use_cpu: true
max_steps: 2
per_device_train_batch_size: 4
save_strategy: steps
save_steps: 1
save_total_limit: 1
eval_strategy: "no"
logging_steps: 1
report_to: none
do_predict: false
push_to_hub: false
hub_token: {token}
"""


def child_env() -> dict:
    return {**os.environ, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def fashioncap(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fashioncap.cli", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """(run dir, everything the training and `push --dry-run` printed)."""
    from fashioncap.data import build_synthetic

    root = tmp_path_factory.mktemp("sec")
    data = build_synthetic(root / "data", train=16, val=4, test=4, pretrain=8)
    run = root / "run"
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE.format(data_dir=data, output_dir=run, token=TOKEN))
    train = fashioncap("train", "--config", str(recipe))
    push = fashioncap("push", "--model-dir", str(run), "--repo-id", "me/sec", "--dry-run")
    return run, train.stdout + train.stderr + push.stdout + push.stderr


# --- paths -------------------------------------------------------------------------------------------------------


def test_a_symlink_out_of_the_data_dir_and_a_split_name_with_dots_are_refused(make_coco_dir, tmp_path):
    from fashioncap.data import DataError, load_captions, references_file

    root = make_coco_dir([("a.png", [{"caption": "a red dress"}])])
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(secret)
    (root / "images" / "a.png").unlink()
    (root / "images" / "a.png").symlink_to(secret)  # the name is harmless; where it points is not
    with pytest.raises(DataError, match=r"record 1, field 'images\.file_name'.*escapes"):
        load_captions(root)
    with pytest.raises(ValueError, match="escapes"):
        references_file(root, "../../secret")


# --- code --------------------------------------------------------------------------------------------------------


def _library_sources() -> dict[str, str]:
    return {
        str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in (ROOT / "fashioncap").rglob("*.py")
    }


def test_no_remote_code_and_no_unsafe_deserialisation_in_the_library():
    sources = _library_sources()
    assert len(sources) > 10
    patterns = {
        "trust_remote_code other than False": r"trust_remote_code\s*=\s*(?!False\b)\S",
        "pickle": r"\bimport pickle\b|\bpickle\.load",
        "torch.load without weights_only=True": r"torch\.load\((?![^)]*weights_only\s*=\s*True)",
        "yaml.load (not safe_load)": r"\byaml\.(?:load|unsafe_load|full_load)\(",
        "eval/exec of text": r"(?<![\w.])(?:eval|exec)\(",
    }
    found = [
        f"{name}: {path}"
        for path, text in sources.items()
        for name, pattern in patterns.items()
        if re.search(pattern, text)
    ]
    assert not found, found
    assert re.search(r"trust_remote_code\s*=\s*False", sources["fashioncap/models/source.py"]), (
        "say it explicitly"
    )


# --- a trained run -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_weights_and_adapters_are_safetensors(trained):
    run, _ = trained
    pickles = sorted(
        str(p.relative_to(run))
        for p in run.rglob("*")
        if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")
    )
    # the only pickles are the Trainer's own state (args, optimizer, scheduler, RNG): no weights among them
    allowed = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"}
    assert pickles and all(Path(p).name in allowed for p in pickles), pickles
    assert "training_args.bin" in pickles, "the Trainer writes it into the run dir: push must leave it out"
    assert (run / "adapter_model.safetensors").is_file()
    assert all((c / "adapter_model.safetensors").is_file() for c in run.glob("checkpoint-*"))


@pytest.mark.slow
def test_the_hub_token_never_reaches_output_logs_configs_or_cards(trained):
    run, output = trained
    assert TOKEN not in output
    carrying = sorted(
        str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()
    )
    # TrainingArguments pickles hub_token as given: training_args.bin carries it, which is why push leaves it out
    assert all(Path(p).name == "training_args.bin" for p in carrying), carrying
    config = json.loads((run / "fashioncap_config.json").read_text())
    assert not [k for k in config["training"] if "token" in k]
    assert "README.md" in {p.name for p in run.iterdir()}


@pytest.mark.slow
def test_push_uploads_only_the_adapter_processor_and_card_of_a_real_run(trained, monkeypatch, pushed_files):
    from huggingface_hub import HfApi

    from fashioncap.hub import push

    run, output = trained
    listed = [
        line.split()[0]
        for line in output.split("would upload", 1)[1].splitlines()[1:]
        if line.startswith("  ")
    ]
    assert listed == pushed_files
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploads.append(kw["allow_patterns"]))
    assert push(run, "me/sec") == pushed_files and uploads == [pushed_files]
    assert not any(TOKEN.encode() in (run / f).read_bytes() for f in pushed_files)
