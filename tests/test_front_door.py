"""The front door (issue 14), each part through the real command in a child process, as a user runs it.

A mistake is one line, `fashioncap COMMAND: error: ...`, exit status 2, no traceback (unless asked for); evals
are kept per split and record what they ran with; paths the user typed are never silently built; skipped files
are reported; help texts say what is true.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import fashioncap
from fashioncap import rundir
from fashioncap.cli import build_parser
from fashioncap.recipe_keys import GENERATION_DEFAULTS, RECIPE_KEYS

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(fashioncap.__file__).resolve().parent
FAST = ["--num-beams", "1", "--max-new-tokens", "4", "--min-new-tokens", "1", "--batch-size", "4"]
TINY_RECIPE = """\
tiny_model: true
lora_preset: decoder
data_dir: {data_dir}
max_length: 20
output_dir: {output_dir}
max_steps: 1
per_device_train_batch_size: 4
report_to: none
eval_strategy: "no"
save_strategy: "no"
do_predict: false
disable_tqdm: true
"""


def run_fashioncap(*args, cwd: Path, env: dict | None = None, script: Path | None = None, timeout: int = 120):
    """`python -m fashioncap ARGS` (or `python SCRIPT ARGS`) in a child process, offline, one thread."""
    unset = ("FASHIONCAP_DEBUG", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT")
    child_env = {k: v for k, v in os.environ.items() if k not in unset}
    child_env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HOME": str(cwd / ".hf")})
    child_env.update(env or {})
    child_env = {k: v for k, v in child_env.items() if v is not None}  # None: unset it
    command = [sys.executable, *([str(script)] if script else ["-m", "fashioncap"]), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=child_env, capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    """The message of a failed command's one line on stderr (exit 2, no traceback, nothing else)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    prefix = f"fashioncap {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix) :]


@pytest.fixture
def tiny_recipe(tmp_path, synthetic_dir) -> Path:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(data_dir=synthetic_dir, output_dir=tmp_path / "run"))
    return recipe


# --- 1. evals per split -------------------------------------------------------------------------------------


def test_eval_keeps_each_split_apart_records_what_it_ran_and_report_never_mixes_splits(
    tiny_model_dir, synthetic_dir, tmp_path
):
    """Also: SPICE's heap comes from FASHIONCAP_SPICE_HEAP; SPICE failing loses none of the other metrics."""
    run = shutil.copytree(tiny_model_dir, tmp_path / "run")
    spice_lib = tmp_path / "spice-lib"
    spice_lib.mkdir()
    for jar in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar", "js.jar"):
        (spice_lib / jar).touch()
    spice_env = {"FASHIONCAP_SPICE_LIB": str(spice_lib), "FASHIONCAP_SPICE_HEAP": "bogus"}
    result = run_fashioncap("eval", "--model-dir", "run", "--data", synthetic_dir, "--split", "val", *FAST,
                            cwd=tmp_path, env=spice_env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["val"], "a val eval goes to RUN/eval/val only"
    metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert (metrics["split"], metrics["num_images"], metrics["data_dir"], metrics["model_dir"]) == (
        "val",
        8,
        str(synthetic_dir),
        "run",
    )
    assert metrics["generation"] == {"num_beams": 1, "max_new_tokens": 4, "min_new_tokens": 1}
    assert set(metrics["versions"]) >= {"fashioncap", "transformers", "peft", "torch", "pycocoevalcap"}
    assert all(metrics["versions"].values())
    assert (
        metrics["SPICE"] is None and "Invalid maximum heap size: -Xmxbogus" in metrics["unavailable"]["SPICE"]
    )
    assert all(isinstance(metrics[m], float) for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "ALS", "SLS"))

    report = run_fashioncap("report", "run", "--out", "report", "--data", synthetic_dir, cwd=tmp_path)
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr
    assert "| run | n/a | n/a | n/a | n/a | n/a | n/a | n/a |" in report.stdout, (
        "val scores are not test scores"
    )
    assert (
        "Not evaluated on the test split" in report.stdout and "run (evaluated on val only)" in report.stdout
    )
    report_val = run_fashioncap("report", "run", "--out", "report", "--split", "val", cwd=tmp_path)
    low, high = metrics["ci95"]["BLEU-4"]
    assert f"| run | {metrics['BLEU-4']:.4f} [{low:.4f}, {high:.4f}] |" in report_val.stdout
    assert "Scores on the val split" in (tmp_path / "report" / "comparison.md").read_text()


def test_a_run_evaluated_before_evals_were_per_split_reads_as_its_test_split(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps({"CIDEr": 1.5, "num_images": 3}))
    (run / "eval" / "predictions.json").write_text(json.dumps([{"image_id": 1, "caption": "a dress"}]))
    assert rundir.eval_metrics(run) == {"CIDEr": 1.5, "num_images": 3, "split": "test"}
    assert rundir.eval_predictions(run) == {1: "a dress"} and rundir.eval_metrics(run, "val") is None
    (run / "eval" / "test").mkdir()
    (run / "eval" / "test" / "metrics.json").write_text(json.dumps({"CIDEr": 2.0, "split": "test"}))
    assert rundir.eval_metrics(run)["CIDEr"] == 2.0, "a per-split eval replaces the old flat one"
    assert rundir.evaluated_splits(run) == ["test"]


# --- 2. paths typed on the command line are never built -----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "typo", "expected"),
    [
        ("model_name_or_path", "outputs/demo/bsae", "outputs/demo/base"),
        ("data_dir", "data/synthtic", "data/synthetic"),
    ],
)
def test_a_path_typed_on_the_command_line_must_exist_and_the_closest_one_is_named(
    tmp_path, synthetic_dir, key, typo, expected
):
    (tmp_path / "outputs/demo/base").mkdir(parents=True)
    shutil.copytree(synthetic_dir, tmp_path / "data/synthetic")
    result = run_fashioncap("train", "--config", REPO / "recipes/demo/trial1.yaml", f"--{key}", typo,
                            "--output_dir", "outputs/demo/trial1", cwd=tmp_path)  # fmt: skip
    message = one_line_error(result, "train")
    assert message.startswith(f"{key} {typo} does not exist (did you mean {expected}?)"), message
    assert not (tmp_path / typo).exists(), "nothing was built at the typo"
    assert not (tmp_path / "outputs/demo/trial1").exists()


@pytest.mark.parametrize(
    ("args", "command", "message"),
    [
        (["eval", "--model-dir", "run", "--data", "data/synthtic"], "eval", "data dir data/synthtic"),
        (["report", "run", "--out", "report", "--data", "data/synthtic"], "report", "data dir data/synthtic"),
        (["score", "--references", "data/synthtic/annotations/test.json", "--predictions", "preds.json"],
         "score", "references data/synthtic/annotations/test.json"),
    ],
    ids=["eval", "report", "score"],
)  # fmt: skip
def test_a_mistyped_data_path_does_not_exist_and_the_closest_one_is_named(
    tmp_path, synthetic_dir, args, command, message
):
    """As `train` says it: eval used to say "no annotation file for split 'test'"."""
    shutil.copytree(synthetic_dir, tmp_path / "data/synthetic")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "fashioncap_config.json").write_text("{}")  # a run, so only the data path is wrong
    (tmp_path / "preds.json").write_text("[]")
    error = one_line_error(run_fashioncap(*args, cwd=tmp_path), command)
    closest = message.split(" ", 2)[-1].replace("synthtic", "synthetic")
    assert error.startswith(f"{message} does not exist (did you mean {closest}?)"), error
    assert not (tmp_path / "report").exists() and not (tmp_path / "run" / "eval").exists()


@pytest.mark.parametrize(
    "args",
    [["eval", "--model-dir", "run", "--data", "d"], ["caption", "--model-dir", "run", "a.png"]],
    ids=["eval", "caption"],
)
def test_caption_and_eval_refuse_a_batch_size_below_1_with_their_usage(capsys, args):
    from fashioncap.cli import main

    with pytest.raises(SystemExit):
        main([*args, "--batch-size", "0"])
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"usage: fashioncap {args[0]} ")
    assert stderr.strip().splitlines()[-1] == (
        f"fashioncap {args[0]}: error: argument --batch-size: 0 is not at least 1"
    )


def test_a_mistyped_hub_id_for_a_demo_recipe_is_neither_a_local_dir_nor_a_hub_model(tmp_path, synthetic_dir):
    """It was "model_name_or_path Salesforce/... does not exist": a missing local path, the Hub never asked."""
    shutil.copytree(synthetic_dir, tmp_path / "data/synthetic")
    typo = "Salesforce/blip-image-captioning-lrge"
    result = run_fashioncap("train", "--config", REPO / "recipes/demo/trial1.yaml", "--model_name_or_path", typo,
                            "--output_dir", "outputs/demo/trial1", cwd=tmp_path)  # fmt: skip
    message = one_line_error(result, "train")
    assert message.startswith(
        f"model '{typo}' is not a local dir, nor in the Hub cache, and HF_HUB_OFFLINE is set"
    )
    assert not (tmp_path / "outputs").exists()


# --- 3. one error boundary ----------------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", [None, REPO / "recipes/trial1.py"], ids=["fashioncap train", "launcher"])
def test_an_unknown_key_is_one_line_that_suggests_the_closest_key(tiny_recipe, tmp_path, launcher):
    config = [] if launcher else ["train", "--config", tiny_recipe]
    result = run_fashioncap(*config, "--lerning_rate", "1", cwd=tmp_path, script=launcher)
    message = one_line_error(result, "train")
    assert message.startswith("unknown key lerning_rate (did you mean learning_rate?) on the command line")


@pytest.mark.parametrize("on_the_command_line", [True, False], ids=["command line", "recipe file"])
def test_a_wrong_type_names_where_the_value_came_from_without_the_usage(
    tiny_recipe, tmp_path, on_the_command_line
):
    if on_the_command_line:
        result = run_fashioncap("train", "--config", tiny_recipe, "--lora_r", "sixteen", cwd=tmp_path)
        where = "on the command line"
    else:
        tiny_recipe.write_text(tiny_recipe.read_text() + "lora_r: sixteen\n")
        result = run_fashioncap("train", "--config", tiny_recipe, cwd=tmp_path)
        where = f"in {tiny_recipe}"
    assert one_line_error(result, "train") == f"bad value for lora_r {where}: invalid int value: 'sixteen'"


def test_a_negative_batch_size_is_one_line_before_anything_is_created(tiny_recipe, tmp_path):
    """It was a 41-line traceback from the data loader, exit 1, and an empty output dir left behind."""
    result = run_fashioncap(
        "train", "--config", tiny_recipe, "--per_device_train_batch_size", "-3", cwd=tmp_path
    )
    message = one_line_error(result, "train")
    assert message == "bad value for per_device_train_batch_size on the command line: -3 is not at least 1"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("per_device_eval_batch_size", "0", "0 is not at least 1"),
        ("global_batch_size", "-16", "-16 is not at least 1"),
        ("learning_rate", "-0.001", "-0.001 is not above 0"),
        ("learning_rate", "nan", "nan is not above 0"),
        ("num_train_epochs", "0", "0.0 is not above 0"),
        ("num_samples", "0", "0 is not at least 1"),
        ("rl_weight", "-0.5", "-0.5 is not a finite number of at least 0"),
        ("reward_weights", "inf", "inf is not a finite number"),
    ],
)
def test_out_of_range_values_name_the_key_and_where_they_came_from(tiny_recipe, key, value, problem):
    from fashioncap.configs import load_config
    from fashioncap.errors import ConfigError

    extra = ["--reward_funcs", "als"] if key == "reward_weights" else []
    with pytest.raises(ConfigError) as raised:
        load_config(tiny_recipe, [*extra, f"--{key}", value])
    assert str(raised.value) == f"bad value for {key} on the command line: {problem}"
    tiny_recipe.write_text(
        tiny_recipe.read_text() + f"{key}: {value}\n" + "reward_funcs: [als]\n" * bool(extra)
    )
    with pytest.raises(ConfigError, match=f"bad value for {key} in {tiny_recipe}: "):
        load_config(tiny_recipe)


@pytest.mark.parametrize(
    "how", ["--debug", "--debug after the command", "--debug to a launcher", "FASHIONCAP_DEBUG=1"]
)
def test_debug_shows_the_traceback_instead(tiny_recipe, tmp_path, how):
    """`--debug` is the traceback switch wherever it stands (after `train` it is not the Trainer's `debug`)."""
    env = {"FASHIONCAP_DEBUG": "1"} if how == "FASHIONCAP_DEBUG=1" else None
    train, script = ["train", "--config", tiny_recipe], None
    args = {
        "--debug": ["--debug", *train, "--lerning_rate", "1"],
        "--debug after the command": [*train, "--lerning_rate", "1", "--debug"],
        "--debug to a launcher": ["--lerning_rate", "1", "--debug"],
        "FASHIONCAP_DEBUG=1": [*train, "--lerning_rate", "1"],
    }[how]
    if how == "--debug to a launcher":
        script = REPO / "recipes/trial1.py"
    result = run_fashioncap(*args, cwd=tmp_path, env=env, script=script)
    assert result.returncode == 1
    assert (
        "Traceback" in result.stderr
        and "fashioncap.errors.ConfigError: unknown key lerning_rate" in result.stderr
    )


@pytest.mark.parametrize(
    ("args", "command", "message"),
    [
        (
            ["data", "synthetic", "--out", "."],
            "data synthetic",
            ". already exists (pass overwrite=True / --overwrite",
        ),
        (["report", "no-such-run", "--out", "report"], "report", "run dir "),
        (["report", "plain", "--out", "report"], "report", "plain is not a run: it has neither"),
        (
            ["study", "--split", "tset", "--runs", "trial1", "--out", "report"],
            "study",
            "(did you mean test?)",
        ),
        (
            ["score", "--references", "refs.json", "--predictions", "preds.json"],
            "score",
            "not in the references: 1 image(s): 999",
        ),
    ],
    ids=["output exists", "missing run dir", "a dir that is no run", "study split", "score input"],
)
def test_known_errors_of_other_commands_are_one_line(tmp_path, args, command, message):
    refs = {"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "caption": "a red dress"}]}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    (tmp_path / "preds.json").write_text(json.dumps([{"image_id": 999, "caption": "a dress"}]))
    (tmp_path / "plain").mkdir()
    assert message in one_line_error(run_fashioncap(*args, cwd=tmp_path), command)
    assert not (tmp_path / "report").exists() and not (tmp_path / "data").exists(), "nothing built or trained"


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["caption", "--model-dir", "run", "a.png", "--csv", "captions.csv"], "caption"),
        (["data", "synthetic", "--out", "data", "--bogus", "1"], "data synthetic"),
    ],
    ids=["caption", "data synthetic"],
)
def test_an_argument_error_names_the_subcommand_and_shows_its_usage(capsys, args, command):
    from fashioncap.cli import main

    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"usage: fashioncap {command} [-h]"), stderr
    error = stderr.strip().splitlines()[-1]
    extra = " ".join(args[-1:] if command == "caption" else args[-2:])
    assert error == f"fashioncap {command}: error: unrecognized arguments: {extra}"


@pytest.mark.slow
def test_an_unknown_key_under_a_two_process_launch_is_printed_once_and_last(tiny_recipe, tmp_path):
    """accelerate (torchrun) prints its failure report after the ranks exit: the one-line error is that report's
    root cause, the last thing printed but the report's closing border; accelerate's exit status is unchanged."""
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run(
        [accelerate, "launch", "--config_file", REPO / "accelerate_configs/cpu_ddp.yaml", "-m", "fashioncap",
         "train", "--config", tiny_recipe, "--lerning_rate", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 1  # accelerate's own status when a rank fails
    line = (
        "fashioncap train: error: unknown key lerning_rate (did you mean learning_rate?) on the command line"
    )
    assert (result.stdout + result.stderr).count(line) == 1, result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr, "the main process exits 2"
    last = [text for text in result.stderr.splitlines() if text.strip(" =")][-1]
    assert last.startswith(f"  traceback : {line}"), result.stderr[-3000:]
    # accelerate (torchrun) reports the failed ranks with a traceback of its own; none comes from fashioncap
    assert "ConfigError" not in result.stderr and "UserError" not in result.stderr
    assert frames_of_this_package(result.stderr) == []


def frames_of_this_package(stderr: str) -> list[str]:
    """The traceback frames (`File "PATH", line N`) whose file lies in the fashioncap package itself: where
    the clone lives (a folder named fashioncap, the venv inside it) does not matter."""
    files = (Path(path).resolve() for path in re.findall(r'File "([^"]+)", line \d+', stderr))
    return [str(path) for path in files if path.is_relative_to(PACKAGE)]


def test_only_frames_of_the_package_count_wherever_the_clone_lives(tmp_path):
    """A clone in a folder named fashioncap: accelerate's own frames there are not the package's."""
    venv_frame = tmp_path / "fashioncap" / ".venv" / "bin" / "accelerate"
    ours = PACKAGE / "errors.py"
    stderr = (
        f'Traceback (most recent call last):\n  File "{venv_frame}", line 8, in <module>\n'
        f'  File "{ours}", line 3, in run_command\nChildFailedError:\n'
    )
    assert frames_of_this_package(stderr) == [str(ours)]
    assert frames_of_this_package(stderr.replace(str(ours), str(venv_frame))) == []


# --- 4. logging, and the Hub --------------------------------------------------------------------------------


def test_train_logs_records_versions_names_the_data_terms_and_never_trains_over_a_finished_run(
    tiny_recipe, tmp_path
):
    trained = run_fashioncap("train", "--config", tiny_recipe, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    warnings = [line for line in (trained.stdout + trained.stderr).splitlines() if "warn" in line.lower()]
    assert warnings == [], "no FutureWarning, pin_memory or deepspeed accelerator noise (issue 21)"
    assert "INFO fashioncap.models.lora: LoRA on 20 modules" in trained.stderr
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert set(results["versions"]) >= {"fashioncap", "transformers", "peft", "torch", "pycocoevalcap"}
    card = (tmp_path / "run" / "README.md").read_text()
    assert "terms of use: generated by fashioncap, Apache-2.0" in card
    assert "`fashioncap push` uploads only the weights, the processor files and this card" in card

    weights = (tmp_path / "run" / "adapter_model.safetensors").read_bytes()
    again = run_fashioncap("train", "--config", tiny_recipe, "--learning_rate", "1e-3", cwd=tmp_path)
    message = one_line_error(again, "train")
    assert message.startswith(
        f"output_dir {tmp_path / 'run'} already holds a finished run (all_results.json)"
    )
    assert "--overwrite_output_dir true" in message
    assert (tmp_path / "run" / "adapter_model.safetensors").read_bytes() == weights


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["offline", "unreachable"],
)
def test_a_hub_model_that_cannot_be_had_fails_fast_in_one_line(tmp_path, env):
    """A mistyped `org/name` is neither a local dir nor a Hub model: both are said, and the closest local dir."""
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "nobody" / "no-such-modl").mkdir(parents=True)
    start = time.monotonic()
    result = run_fashioncap("caption", "--model-dir", "nobody/no-such-model", "a.png", cwd=tmp_path, env=env)
    assert time.monotonic() - start < 40, (
        "no 50 s of retries (the command itself starts in ~10 s, more on a loaded machine)"
    )
    message = one_line_error(result, "caption")
    assert message.startswith(
        "model 'nobody/no-such-model' is not a local dir (did you mean nobody/no-such-modl?), "
    ), message
    assert "HF_HUB_OFFLINE" in message
    if env["HF_HUB_OFFLINE"] is None:
        assert "cannot reach the Hugging Face Hub (http://127.0.0.1:9)" in message


def test_only_the_known_harmless_records_are_hidden_and_only_by_the_commands():
    import logging

    from fashioncap.noise import hide_known_harmless

    def record(message):
        return logging.LogRecord("DeepSpeed", logging.WARNING, "x.py", 1, message, None, None)

    deepspeed = logging.getLogger("DeepSpeed")
    hide_known_harmless()
    hide_known_harmless()
    assert len(deepspeed.filters) == len({type(f) for f in deepspeed.filters}), "installed once"
    assert not deepspeed.filter(
        record("Setting accelerator to CPU. If you have GPU or other accelerator, ...")
    )
    assert deepspeed.filter(record("ZeRO stage 3 needs ...")), "other deepspeed warnings stay"
    imported = subprocess.run(
        [sys.executable, "-c", "import logging, fashioncap.train; print(logging.getLogger('DeepSpeed').filters)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert imported.stdout.strip() == "[]", "importing the library hides nothing"


def test_a_cpu_falls_back_from_bf16_with_one_warning(tmp_path):
    """The launcher of a GPU recipe (bf16: true) on this CPU: one warning, then the missing data named."""
    result = run_fashioncap("--data_dir", "facad", "--output_dir", "out", cwd=tmp_path,
                            script=REPO / "recipes/trial1.py")  # fmt: skip
    warning, error = result.stderr.splitlines()
    assert (
        "WARNING" in warning and "bf16: true needs a GPU and there is none here: training in fp32" in warning
    )
    assert error.startswith(
        "fashioncap train: error: data_dir facad does not exist; build it with `fashioncap data"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr


# --- 5/6. push ----------------------------------------------------------------------------------------------


@pytest.fixture
def val_only_run(tmp_path, synthetic_dir) -> Path:
    """A run dir with its recipe (the synthetic data dir) and an eval of the val split only."""
    from fashioncap.configs import load_config

    run = tmp_path / "run"
    (run / "eval" / "val").mkdir(parents=True)
    config = load_config(REPO / "recipes/demo/trial1.yaml", ["--data_dir", str(synthetic_dir)]).to_dict()
    (run / "fashioncap_config.json").write_text(json.dumps(config, default=str))
    (run / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "eval" / "val" / "metrics.json").write_text(json.dumps({"CIDEr": 1.25, "split": "val"}))
    return run


def test_push_asks_for_a_token_before_anything_else(val_only_run, tmp_path):
    before = sorted(p.relative_to(val_only_run) for p in val_only_run.rglob("*"))
    message = one_line_error(
        run_fashioncap("push", "--model-dir", "run", "--repo-id", "me/x", cwd=tmp_path), "push"
    )
    assert message.startswith("no Hugging Face token to push with: run `hf auth login` or set HF_TOKEN")
    assert sorted(p.relative_to(val_only_run) for p in val_only_run.rglob("*")) == before, "nothing prepared"


def test_the_card_names_the_split_scored_and_the_data_terms(val_only_run, tmp_path):
    result = run_fashioncap("push", "--model-dir", "run", "--repo-id", "me/x", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "## Scores on the val split" in result.stdout and "split: val" in result.stdout
    assert "terms of use: generated by fashioncap, Apache-2.0" in result.stdout


def test_the_demo_overwrites_a_run_only_when_it_decided_to_retrain_it(tmp_path, synthetic_dir, monkeypatch):
    from fashioncap import demo

    recipes, run = tmp_path / "recipes", tmp_path / "trial1"
    recipes.mkdir()
    (recipes / "trial1.yaml").write_text(f"tiny_model: true\ndata_dir: {synthetic_dir}\noutput_dir: {run}\n")
    run.mkdir()
    (run / "all_results.json").write_text("{}")  # finished, but with another recipe (none saved)
    trained, evaluated = [], []
    monkeypatch.setattr(demo, "ensure_synthetic", lambda data_dir: None)
    monkeypatch.setattr(demo, "train", lambda config: trained.append(config.training.overwrite_output_dir))
    monkeypatch.setattr(
        demo, "evaluate_run", lambda *args, **kwargs: evaluated.append((args, kwargs)) or {"num_images": 1}
    )
    monkeypatch.setattr(demo, "write_report", lambda *args, **kwargs: {"verdict": [], "table": ""})
    demo.run_demo(recipes, str(tmp_path / "report"))
    assert trained == [True]
    [(args, kwargs)] = evaluated
    assert args[2] == "test" and "out_dir" not in kwargs, "evaluated into the default: RUN/eval/test"


# --- 7. caption and report ----------------------------------------------------------------------------------


def test_caption_reports_every_skipped_file_in_csv_and_its_summary(tiny_model_dir, synthetic_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(next((synthetic_dir / "images" / "test").iterdir()), folder / "a.png")
    (folder / "b_broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("a note")
    args = ["caption", "--model-dir", tiny_model_dir, "photos", "photos/a.pgn", "--csv", "--out", "captions.csv",
            *FAST]  # fmt: skip
    result = run_fashioncap(*args, cwd=tmp_path)
    assert result.returncode == 1, "any file skipped: exit 1 (0 means every input was captioned)"
    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "captions.csv").open())}
    assert rows["a.png"]["caption"] and not rows["a.png"]["error"]
    assert rows["b_broken.png"]["error"] == "not an image (unrecognised format)"
    assert rows["notes.txt"]["error"] == "not an image file"
    assert rows["a.pgn"]["error"] == "file not found (did you mean photos/a.png?)", "a typo names the closest"
    assert "skipped photos/notes.txt: not an image file" in result.stderr
    assert "fashioncap caption: 1 captioned, 3 skipped (2 unreadable, 1 not an image file)" in result.stderr


# --- 8. help ------------------------------------------------------------------------------------------------


def parsers(parser: argparse.ArgumentParser, name: str = "fashioncap"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def test_every_option_of_every_command_has_help():
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, parser in parsers(build_parser())
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert not missing


def test_train_help_lists_every_recipe_key_by_group_and_the_generation_defaults_are_the_recipes(capsys):
    from transformers import Seq2SeqTrainingArguments

    from fashioncap.cli import main
    from fashioncap.configs import SECTIONS, DataArguments, FashionCapTrainingArguments, ModelArguments

    def names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    trainer_keys = set(names(Seq2SeqTrainingArguments))
    assert list(RECIPE_KEYS["model"]) == names(ModelArguments)
    assert list(RECIPE_KEYS["data"]) == names(DataArguments)
    own = [key for key in names(FashionCapTrainingArguments) if key not in trainer_keys]
    assert sorted(own) == sorted(RECIPE_KEYS["reward"] + RECIPE_KEYS["generation"] + RECIPE_KEYS["run"])
    assert SECTIONS == {"reward": RECIPE_KEYS["reward"], "generation": RECIPE_KEYS["generation"]}
    fields = FashionCapTrainingArguments.__dataclass_fields__
    assert {key: fields[key].default for key in GENERATION_DEFAULTS} == GENERATION_DEFAULTS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for group, keys in RECIPE_KEYS.items():
        assert f"{group}: {', '.join(keys)}" in help_text
    assert "every Seq2SeqTrainingArguments key" in help_text
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert f"for a model without one, {GENERATION_DEFAULTS['num_beams']})" in capsys.readouterr().out


def test_help_loads_neither_torch_nor_transformers(tmp_path):
    code = (
        "import sys\nfrom fashioncap.cli import main\n"
        "for command in ('train', 'eval', 'caption'):\n"
        "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.splitlines()[-1] == "[]", result.stderr


def test_spice_heap_is_8g_unless_set(tmp_path, monkeypatch):
    from fashioncap.metrics import coco_caption

    for jar in (*coco_caption.CORENLP_JARS, "js.jar"):
        (tmp_path / jar).touch()
    monkeypatch.setenv(coco_caption.SPICE_LIB_ENV, str(tmp_path))
    monkeypatch.delenv(coco_caption.SPICE_HEAP_ENV, raising=False)
    assert "-Xmx8G" in coco_caption.spice_command()
    monkeypatch.setenv(coco_caption.SPICE_HEAP_ENV, "2G")
    assert "-Xmx2G" in coco_caption.spice_command() and "-Xmx8G" not in coco_caption.spice_command()


def test_the_closest_path_hint_picks_the_closest_existing_name(tmp_path, monkeypatch):
    from fashioncap.errors import closest_path_hint, did_you_mean

    (tmp_path / "imgs").mkdir()
    for name in ("000000.png", "000001.png", "000002.png", "000010.png"):
        (tmp_path / "imgs" / name).touch()
    monkeypatch.chdir(tmp_path)
    assert closest_path_hint("imgs/00000.png") == " (did you mean imgs/000000.png?)", "one insertion away"
    assert closest_path_hint("img/00010.png") == " (did you mean imgs/000010.png?)"
    assert did_you_mean("tset", ["train", "val", "test"]) == " (did you mean test?)"
    assert closest_path_hint("imgs/zzz.txt") == ""
