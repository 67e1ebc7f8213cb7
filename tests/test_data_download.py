"""Downloading against a real HTTP server on 127.0.0.1: 404s, a slow response, truncated and corrupt files, resume."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from fashioncap.data.download import DownloadJob, download_images, download_one, full_resolution_url
from fashioncap.data.facad import build_facad, colour_dir

TIMEOUT = 0.4  # the client's; slow responses take SLOW seconds
SLOW = 1.5


def _jpeg(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


FULL, THUMB = _jpeg((120, 180)), _jpeg((60, 90))


class Handler(BaseHTTPRequestHandler):
    hits: Counter = Counter()

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, body: bytes, length: int | None = None, status: int = 200):
        self.send_response(status)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        Handler.hits[path] += 1
        try:
            if path.startswith("/ok/"):
                self._send(THUMB if query else FULL)  # thumbnails unless the query is dropped
            elif path == "/slow-once.jpeg" and Handler.hits[path] == 1 or path == "/slow-always.jpeg":
                time.sleep(SLOW)
                self._send(FULL)
            elif path == "/slow-once.jpeg":
                self._send(FULL)
            elif path == "/truncated.jpeg":  # the connection drops half-way
                self._send(FULL[: len(FULL) // 2], length=len(FULL))
            elif path == "/corrupt.jpeg":  # complete transfer of a broken file
                self._send(FULL[: len(FULL) // 2])
            elif path == "/flaky.jpeg" and Handler.hits[path] <= 2:
                self._send(b"busy", status=503)
            elif path == "/flaky.jpeg":
                self._send(FULL)
            else:
                self._send(b"not found", status=404)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow response
            pass


@pytest.fixture
def server():
    Handler.hits = Counter()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_full_resolution_url():
    assert full_resolution_url("https://x/a/58d1.jpeg?crop=pad&w=60&h=90") == "https://x/a/58d1.jpeg"
    assert full_resolution_url("https://x/a/58d1.png?w=60") == "https://x/a/58d1.png?w=60"


def test_download_outcomes(server, tmp_path):
    names = [
        "ok/1.jpeg",
        "missing.jpeg",
        "slow-once.jpeg",
        "slow-always.jpeg",
        "truncated.jpeg",
        "corrupt.jpeg",
        "flaky.jpeg",
    ]
    jobs = [DownloadJob(name, f"{server}/{name}", tmp_path / name) for name in names]
    jobs[0] = DownloadJob(
        "ok/1.jpeg", full_resolution_url(f"{server}/ok/1.jpeg?crop=pad&w=60&h=90"), jobs[0].path
    )
    failures = download_images(jobs, workers=4, timeout=TIMEOUT, retries=2, backoff=0.01, progress=False)
    assert set(failures) == {"missing.jpeg", "slow-always.jpeg", "truncated.jpeg", "corrupt.jpeg"}
    assert "HTTP 404" in failures["missing.jpeg"]
    assert "timed out" in failures["slow-always.jpeg"] and "after 3 attempts" in failures["slow-always.jpeg"]
    assert "truncated" in failures["truncated.jpeg"] or "IncompleteRead" in failures["truncated.jpeg"]
    assert "not a usable image" in failures["corrupt.jpeg"]
    with Image.open(tmp_path / "ok/1.jpeg") as im:
        assert im.size == (120, 180)  # full resolution, not the 60x90 thumbnail
    assert (tmp_path / "slow-once.jpeg").is_file() and (tmp_path / "flaky.jpeg").is_file()
    hits = Handler.hits
    assert hits["/missing.jpeg"] == 1 and hits["/corrupt.jpeg"] == 1  # permanent: not retried
    assert hits["/slow-always.jpeg"] == hits["/truncated.jpeg"] == 3 and hits["/flaky.jpeg"] == 3
    assert not list(tmp_path.rglob("*.part"))
    for name in failures:
        assert not (tmp_path / name).exists()


def test_resume_keeps_good_files_and_replaces_bad_ones(server, tmp_path):
    good, bad = tmp_path / "ok/good.jpeg", tmp_path / "ok/bad.jpeg"
    good.parent.mkdir()
    good.write_bytes(THUMB)
    bad.write_bytes(THUMB[:100])  # a previous run's broken file
    (tmp_path / "ok/bad.jpeg.part").write_bytes(b"leftover")
    jobs = [DownloadJob(p.name, f"{server}/ok/{p.name}", p) for p in (good, bad)]
    assert download_images(jobs, workers=2, timeout=TIMEOUT, progress=False) == {}
    assert Handler.hits["/ok/good.jpeg"] == 0 and Handler.hits["/ok/bad.jpeg"] == 1
    assert good.read_bytes() == THUMB and bad.read_bytes() == FULL
    assert not (tmp_path / "ok/bad.jpeg.part").exists()
    assert download_one(jobs[1], timeout=TIMEOUT) is None and Handler.hits["/ok/bad.jpeg"] == 1


def test_build_facad_with_download(server, tmp_path, facad_descriptions):
    records = []
    for i, rec in enumerate(facad_descriptions[:10]):
        target = "missing" if i in (2, 7) else f"ok/{rec['id']}"
        url = f"{server}/{target}.jpeg?crop=pad&w=60&h=90"
        records.append(
            {
                "id": rec["id"],
                "images": [{"color": "Black/ Ivory", "0": url}],
                "title": rec["title"],
                "description": rec["description"],
                "categoryid": 1,
                "category": "item",
                "attr": [],
            }
        )
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(records))
    root = tmp_path / "raw"
    out = build_facad(
        meta,
        root,
        tmp_path / "out",
        download=True,
        train=5,
        val=1,
        test=2,
        image_size=64,
        workers=4,
        timeout=TIMEOUT,
        retries=0,
        progress=False,
    )
    report = json.loads((out / "build_report.json").read_text())
    assert report["counts"] == {"train": 5, "val": 1, "test": 2} and report["download_failures"] == 2
    assert {(s["record"], s["field"]) for s in report["skipped"]} == {
        (records[i]["id"], "images.0") for i in (2, 7)
    }
    assert all("HTTP 404" in s["reason"] for s in report["skipped"])
    assert (root / str(records[0]["id"]) / colour_dir("Black/ Ivory") / "0.jpeg").is_file()  # FACAD layout
    # a second build finds every image on disk and downloads nothing new
    before = sum(v for k, v in Handler.hits.items() if k.startswith("/ok/"))
    build_facad(
        meta,
        root,
        tmp_path / "again",
        download=True,
        train=5,
        val=1,
        test=2,
        image_size=64,
        timeout=TIMEOUT,
        retries=0,
        progress=False,
    )
    assert sum(v for k, v in Handler.hits.items() if k.startswith("/ok/")) == before
