"""The GPU check runs where nothing else of the stack is installed: its CPU dry run (`--smoke`, the GPU machine's
absent packages blocked) must finish every section without an error, so a lent GPU is never spent on an import."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_imports_nothing_the_gpu_machine_lacks(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu-smoke.json").read_text())
    errors = {
        k: r["error"] for section in ("train", "eval") for k, r in result[section].items() if "error" in r
    }
    assert not errors, errors
    assert all(r["graph_same_captions_as_eager"] for r in result["eval"].values())
