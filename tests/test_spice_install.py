"""`install-spice` against a fake Maven repository on 127.0.0.1: install, rerun, resume, bad digests, 404s."""

from __future__ import annotations

import argparse
import hashlib
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fashioncap.commands.metrics import add_install_spice_arguments as add_arguments
from fashioncap.commands.metrics import install_spice_command as run
from fashioncap.metrics import coco_caption
from fashioncap.metrics.spice_install import Artifact, InstallError, install_spice, required_artifacts

ARTIFACTS = required_artifacts(17)
# Small stand-ins for the jars, different from each other, so a mix-up shows in the bytes.
JARS = {a.repo_path: bytes([i]) * 3000 + bytes(range(256)) * (20 + i) for i, a in enumerate(ARTIFACTS)}
CODE, MODELS, RHINO, _ = ARTIFACTS


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class FakeMaven(BaseHTTPRequestHandler):
    """Serves JARS and their `.sha1` files under /maven2/, with Range support; records every request."""

    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []
    drop_once: set[str] = set()  # paths whose next response stops half-way, as a dropped connection does
    honour_range = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        FakeMaven.requests.append((self.path, self.headers.get("Range")))
        body = FakeMaven.files.get(self.path)
        if body is None:
            return self._reply(404, {}, b"not found")
        match = (
            re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "") if FakeMaven.honour_range else None
        )
        start = int(match.group(1)) if match else 0
        if start >= len(body) > 0:
            return self._reply(416, {"Content-Range": f"bytes */{len(body)}"}, b"")
        if not match:
            return self._reply(200, {}, body)
        headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        self._reply(206, headers, body[start:])

    def _reply(self, status: int, headers: dict, body: bytes):
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.path in FakeMaven.drop_once:
            FakeMaven.drop_once.discard(self.path)
            body = body[: len(body) // 2]
        self.wfile.write(body)


def url_path(artifact: Artifact) -> str:
    return f"/maven2/{artifact.repo_path}"


def requests_for(artifact: Artifact) -> list[str | None]:
    """The Range header of each request for the artifact's jar (None: a request for the whole file)."""
    return [byte_range for path, byte_range in FakeMaven.requests if path == url_path(artifact)]


@pytest.fixture
def maven():
    FakeMaven.files = {}
    for repo_path, data in JARS.items():
        FakeMaven.files[f"/maven2/{repo_path}"] = data
        FakeMaven.files[f"/maven2/{repo_path}.sha1"] = f"{sha1(data)}  {Path(repo_path).name}\n".encode()
    FakeMaven.requests, FakeMaven.drop_once, FakeMaven.honour_range = [], set(), True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeMaven)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/maven2"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def lib(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv(coco_caption.SPICE_LIB_ENV, raising=False)
    return tmp_path / "lib"


def command(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def installed(lib: Path, artifact: Artifact) -> bytes:
    return (lib / artifact.file_name).read_bytes()


def test_install_then_rerun_makes_no_request(maven, lib, capsys):
    assert run(command("--lib-dir", str(lib), "--base-url", maven, "--java-major", "17")) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out[:4]] == [a.file_name for a in ARTIFACTS]
    assert all(" downloaded " in line and f"to {lib}" in line for line in out[:4])
    assert f"set {coco_caption.SPICE_LIB_ENV}={lib}" in out[4]  # not where SPICE looks by default
    for artifact in ARTIFACTS:
        assert installed(lib, artifact) == JARS[artifact.repo_path]
        assert (lib / f"{artifact.file_name}.sha1").read_text().strip() == sha1(JARS[artifact.repo_path])
    assert not list(lib.glob("*.part"))

    FakeMaven.requests.clear()
    assert run(command("--lib-dir", str(lib), "--base-url", maven, "--java-major", "17")) == 0
    assert FakeMaven.requests == []
    assert all("already present" in line for line in capsys.readouterr().out.splitlines()[:4])


def test_java_11_gets_no_javascript_engine(maven, lib):
    results = install_spice(lib, maven, required_artifacts(11))
    assert [r.path.name for r in results] == list(coco_caption.CORENLP_JARS)
    assert not any(path.startswith("/maven2/org/mozilla") for path, _ in FakeMaven.requests)


def test_resume_from_an_interrupted_part(maven, lib, capsys):
    lib.mkdir()
    half = len(JARS[MODELS.repo_path]) // 2
    (lib / f"{MODELS.file_name}.part").write_bytes(JARS[MODELS.repo_path][:half])
    assert run(command("--lib-dir", str(lib), "--base-url", maven, "--java-major", "11")) == 0
    assert requests_for(MODELS) == [f"bytes={half}-"]
    assert installed(lib, MODELS) == JARS[MODELS.repo_path]
    assert not (lib / f"{MODELS.file_name}.part").exists()
    assert f"{MODELS.file_name}: resumed at " in capsys.readouterr().out


def test_dropped_connection_is_resumed_in_the_same_run(maven, lib):
    FakeMaven.drop_once.add(url_path(CODE))
    [result] = install_spice(lib, maven, [CODE], backoff=0)
    half = len(JARS[CODE.repo_path]) // 2
    assert requests_for(CODE) == [None, f"bytes={half}-"]
    assert result.action == "resumed" and installed(lib, CODE) == JARS[CODE.repo_path]


def test_part_of_another_file_is_fetched_again_from_scratch(maven, lib):
    lib.mkdir()
    (lib / f"{CODE.file_name}.part").write_bytes(b"from some other download")
    [result] = install_spice(lib, maven, [CODE], backoff=0)
    assert requests_for(CODE) == ["bytes=24-", None]
    assert result.action == "downloaded" and installed(lib, CODE) == JARS[CODE.repo_path]


@pytest.mark.parametrize("case", ["part longer than the jar (416)", "server ignores Range (200)"])
def test_part_that_cannot_be_continued_is_replaced(maven, lib, case):
    lib.mkdir()
    data = JARS[CODE.repo_path]
    part = data + b"extra" if "416" in case else data[:100]
    (lib / f"{CODE.file_name}.part").write_bytes(part)
    FakeMaven.honour_range = "416" in case
    [result] = install_spice(lib, maven, [CODE], backoff=0)
    assert requests_for(CODE) == [f"bytes={len(part)}-", None] if "416" in case else [f"bytes={len(part)}-"]
    assert result.action == "downloaded" and installed(lib, CODE) == data


def test_published_checksum_mismatch_installs_nothing(maven, lib, capsys):
    FakeMaven.files[f"{url_path(RHINO)}.sha1"] = b"0" * 40
    assert (
        run(command("--lib-dir", str(lib), "--base-url", maven, "--java-major", "17", "--retries", "0")) == 2
    )
    [error] = capsys.readouterr().err.splitlines()
    assert "checksum mismatch" in error and f"{maven}/{RHINO.repo_path}.sha1 says {'0' * 40}" in error
    assert not [p for p in lib.iterdir() if p.name.startswith(RHINO.file_name)]  # no jar, .part or record


def test_pinned_digest_is_checked_and_spares_the_published_one(maven, lib):
    good = Artifact(CODE.repo_path, CODE.file_name, sha1=sha1(JARS[CODE.repo_path]))
    install_spice(lib, maven, [good])
    assert [path for path, _ in FakeMaven.requests] == [url_path(CODE)]  # no .sha1 request
    bad = Artifact(RHINO.repo_path, RHINO.file_name, sha1="f" * 40)
    with pytest.raises(InstallError, match="the pinned digest says f{40}"):
        install_spice(lib, maven, [bad])
    assert not (lib / RHINO.file_name).exists() and not (lib / f"{RHINO.file_name}.part").exists()


def test_jar_put_there_by_hand_is_verified_not_downloaded(maven, lib):
    lib.mkdir()
    (lib / CODE.file_name).write_bytes(JARS[CODE.repo_path])
    [result] = install_spice(lib, maven, [CODE])
    assert result.action == "present" and FakeMaven.requests == [(f"{url_path(CODE)}.sha1", None)]
    assert (lib / f"{CODE.file_name}.sha1").read_text().strip() == sha1(JARS[CODE.repo_path])


def test_a_corrupted_jar_is_replaced(maven, lib):
    install_spice(lib, maven, [CODE])
    (lib / CODE.file_name).write_bytes(b"damaged")
    [result] = install_spice(lib, maven, [CODE])
    assert result.action == "downloaded" and installed(lib, CODE) == JARS[CODE.repo_path]


def test_missing_artifact_names_the_url(maven, lib, capsys):
    del FakeMaven.files[url_path(MODELS)]
    assert run(command("--lib-dir", str(lib), "--base-url", maven, "--java-major", "11")) == 2
    captured = capsys.readouterr()
    assert (
        captured.err
        == f"fashioncap metrics install-spice: error: HTTP 404 Not Found: {maven}/{MODELS.repo_path}\n"
    )
    assert f"{CODE.file_name}: downloaded" in captured.out  # what was done before the failure is said
    assert requests_for(MODELS) == [None]  # a 404 is not retried
    assert not (lib / MODELS.file_name).exists()


def test_unwritable_lib_dir_suggests_the_env_var(maven, tmp_path, capsys):
    (tmp_path / "file").touch()
    argv = ["--lib-dir", str(tmp_path / "file" / "lib"), "--base-url", maven, "--java-major", "17"]
    assert run(command(*argv)) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert "cannot write to" in error and f"set {coco_caption.SPICE_LIB_ENV}=DIR" in error
    assert FakeMaven.requests == []


def test_spice_command_finds_the_installed_jars(maven, lib, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(coco_caption.SPICE_LIB_ENV, str(lib))
    monkeypatch.setattr(coco_caption, "_java_major", lambda: 17)
    monkeypatch.setattr(coco_caption, "_require_java", lambda: "java")
    monkeypatch.setattr(coco_caption, "_SYSTEM_JAVA_DIR", tmp_path / "no-system-jars")
    with pytest.raises(coco_caption.MetricUnavailable, match="JavaScript engine"):
        coco_caption.spice_command()
    assert run(command("--base-url", maven)) == 0  # lib dir and Java version as SPICE sees them
    assert "note:" not in capsys.readouterr().out
    classpath = (cmd := coco_caption.spice_command())[cmd.index("-cp") + 1].split(":")
    assert f"{lib}/*" in classpath and classpath[-1] == f"{lib}/{RHINO.file_name}"


def test_unreachable_mirror_in_a_child_process(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/maven2"
    argv = ["--lib-dir", str(tmp_path), "--base-url", base_url, "--java-major", "17", "--retries", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "fashioncap", "metrics", "install-spice", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"fashioncap metrics install-spice: error: cannot download {base_url}/")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
