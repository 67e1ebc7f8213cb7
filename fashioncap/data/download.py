"""Fetch FACAD front images over HTTP with the standard library: concurrent, bounded, retried, resumable.

A file is only ever moved into place complete and decodable (written to `<name>.part`, then renamed), so an
interrupted run resumes by keeping what is already there and fetching the rest.
"""

from __future__ import annotations

import http.client
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from fashioncap.data.images import ImageProblem, open_rgb

USER_AGENT = "fashioncap-downloader/0.1 (+https://github.com/)"
# Client errors that a retry cannot fix; anything else (5xx, 408, 429, timeouts, resets) is retried.
PERMANENT_STATUS = frozenset(range(400, 500)) - {408, 425, 429}


@dataclass(frozen=True)
class DownloadJob:
    record: object  # the item id, for the report
    url: str
    path: Path


class PermanentError(Exception):
    """A failure that retrying will not fix (404, not an image)."""


def full_resolution_url(url: str) -> str:
    """FACAD URLs end in '.jpeg?crop=pad&w=60&h=90' (a thumbnail); without the query the image is full size."""
    cut = url.find(".jpeg")
    return url[: cut + len(".jpeg")] if cut >= 0 else url


def is_decodable(path: Path) -> bool:
    try:
        open_rgb(path, draft=64)
        return True
    except ImageProblem:
        return False


def _fetch(job: DownloadJob, timeout: float) -> None:
    part = job.path.with_name(job.path.name + ".part")
    job.path.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(job.url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as f:
            expected = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(1 << 16):
                f.write(chunk)
                received += len(chunk)
        if expected is not None and received != int(expected):
            raise ConnectionError(f"truncated: received {received} of {expected} bytes")
        try:
            open_rgb(part, draft=64)
        except ImageProblem as e:
            raise PermanentError(f"downloaded file is not a usable image: {e}") from None
        os.replace(part, job.path)
    except urllib.error.HTTPError as e:
        if e.code in PERMANENT_STATUS:
            raise PermanentError(f"HTTP {e.code} {e.reason}") from None
        raise
    finally:
        part.unlink(missing_ok=True)


def download_one(
    job: DownloadJob, timeout: float = 30.0, retries: int = 3, backoff: float = 1.0
) -> str | None:
    """Fetch one image unless a decodable copy exists. Returns None on success, else the reason it failed."""
    if job.path.is_file() and is_decodable(job.path):
        return None
    for attempt in range(retries + 1):
        try:
            _fetch(job, timeout)
            return None
        except PermanentError as e:
            return str(e)
        except (http.client.HTTPException, OSError) as e:  # URLError, timeouts, resets, truncation
            reason = getattr(e, "reason", None) or e
            error = f"{type(e).__name__}: {reason}"
        if attempt < retries:  # exponential backoff with jitter, so many threads do not retry in lock-step
            time.sleep(backoff * (2**attempt) * (0.5 + random.random()))
    return f"failed after {retries + 1} attempts: {error}"


def download_images(
    jobs: list[DownloadJob],
    workers: int = 16,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
    progress: bool = True,
) -> dict[object, str]:
    """Download every job's URL to its path (keeping decodable files already there); return {record: reason}
    for those that failed."""
    failures: dict[object, str] = {}
    if not jobs:
        return failures
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(jobs), desc="download", unit="img", disable=not progress) as bar,
    ):
        futures = {pool.submit(download_one, job, timeout, retries, backoff): job for job in jobs}
        for future in as_completed(futures):
            reason = future.result()
            if reason is not None:
                failures[futures[future].record] = reason
            bar.update()
    return failures
