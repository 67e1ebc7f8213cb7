"""`fashioncap metrics install-spice`: put the jars SPICE needs where `spice_command` looks for them.

SPICE needs Stanford CoreNLP 3.6.0 (code and models jars) and, on Java 15+, a JavaScript engine. pycocoevalcap's
own download (a 390 MB zip from nlp.stanford.edu) is unreachable from many clusters, so the jars come from Maven
Central or a mirror of it. Each jar is written to `<name>.part`, continued with an HTTP Range request after an
interruption, checked against its SHA-1 and only then renamed into place. The verified digest is kept beside it
as `<name>.sha1`, so a rerun checks the files on disk and makes no request.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fashioncap.data.download import PERMANENT_STATUS, USER_AGENT
from fashioncap.errors import UserError
from fashioncap.io_utils import write_text_atomic
from fashioncap.metrics import coco_caption

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
_CHUNK = 1 << 20
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class Artifact:
    """A jar in a Maven repository, and the file name SPICE looks for it under."""

    repo_path: str
    file_name: str
    sha1: str | None = None  # pinned digest, checked instead of the `.sha1` published beside the artifact


# Pin a digest (Artifact(..., sha1=...)) only after checking it against a trusted copy; never guess one.
CORENLP_ARTIFACTS = tuple(
    Artifact(f"edu/stanford/nlp/stanford-corenlp/3.6.0/{jar}", jar) for jar in coco_caption.CORENLP_JARS
)
# Rhino, saved as a name `spice_command` looks for; rhino-engine registers it with javax.script (JSR-223)
# under "JavaScript", the name Nashorn answered to. Both are on SPICE's classpath through the lib dir's "*".
JS_ENGINE_ARTIFACTS = (
    Artifact("org/mozilla/rhino/1.7.14/rhino-1.7.14.jar", "rhino.jar"),
    Artifact("org/mozilla/rhino-engine/1.7.14/rhino-engine-1.7.14.jar", "rhino-engine.jar"),
)


class InstallError(UserError):
    """A jar could not be installed; the message is one line that names the URL or folder and the cause."""


@dataclass(frozen=True)
class InstallResult:
    path: Path
    action: str  # "downloaded", "resumed" or "present"
    size: int
    resumed_from: int = 0

    def describe(self) -> str:
        where = self.path.parent
        if self.action == "present":
            return f"{self.path.name}: already present ({_mb(self.size)}) in {where}"
        if self.action == "resumed":
            return f"{self.path.name}: resumed at {_mb(self.resumed_from)}, {_mb(self.size)} in {where}"
        return f"{self.path.name}: downloaded {_mb(self.size)} to {where}"


def detect_java_major() -> int | None:
    """This machine's Java major version; None when there is no usable `java`."""
    try:
        return coco_caption._java_major()
    except RuntimeError:
        return None


def required_artifacts(java_major: int | None) -> tuple[Artifact, ...]:
    """CoreNLP always; the JavaScript engine from Java 15 on, and without Java (17 is the one to install)."""
    needs_engine = java_major is None or java_major >= 15
    return CORENLP_ARTIFACTS + (JS_ENGINE_ARTIFACTS if needs_engine else ())


def install_spice(
    lib_dir: Path,
    base_url: str = MAVEN_CENTRAL,
    artifacts: Sequence[Artifact] | None = None,
    *,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = False,
    report: Callable[[InstallResult], object] | None = None,
) -> list[InstallResult]:
    """Make sure each artifact (default: what this machine's Java needs) is in `lib_dir`, verified.

    `report` is called as each jar is done, so a long run says what it has done before it ends or fails.
    Raises InstallError (or OSError for local disk trouble) at the first jar that cannot be installed.
    """
    lib_dir = Path(lib_dir)
    _check_writable(lib_dir)
    client = _Client(timeout, max(0, retries), backoff, progress)
    results = []
    for artifact in required_artifacts(detect_java_major()) if artifacts is None else artifacts:
        results.append(
            _install_one(artifact, lib_dir, f"{base_url.rstrip('/')}/{artifact.repo_path}", client)
        )
        if report is not None:
            report(results[-1])
    return results


def _install_one(artifact: Artifact, lib_dir: Path, url: str, client: _Client) -> InstallResult:
    target = lib_dir / artifact.file_name
    record = target.with_name(target.name + ".sha1")
    on_disk = _sha1(target) if target.is_file() else None
    if on_disk is not None and on_disk == (artifact.sha1 or _read_digest(record)):
        return InstallResult(target, "present", target.stat().st_size)
    expected = artifact.sha1 or client.published_sha1(url)
    if on_disk == expected:  # put there by hand: verified now, recorded for the next run
        action, resumed_from = "present", 0
    else:
        part = target.with_name(target.name + ".part")
        resumed_from = _fetch_verified(client, url, part, expected, pinned=artifact.sha1 is not None)
        os.replace(part, target)
        action = "resumed" if resumed_from else "downloaded"
    write_text_atomic(record, expected + "\n")
    return InstallResult(target, action, target.stat().st_size, resumed_from)


def _fetch_verified(client: _Client, url: str, part: Path, expected: str, pinned: bool) -> int:
    """Complete `part` from `url` and check its SHA-1; return the offset the successful fetch continued from.

    A mismatch after a resumed fetch may come from a `.part` of some other file, so that one case is fetched
    once more from scratch; a mismatching file is deleted, never left for a later run to resume.
    """
    if part.is_file() and _sha1(part) == expected:  # complete, but the run ended before the rename
        return part.stat().st_size
    for from_scratch in (False, True):
        if from_scratch:
            part.unlink()
        offset = client.download(url, part)
        actual = _sha1(part)
        if actual == expected:
            return offset
        if not offset:
            break
    part.unlink()
    source = "the pinned digest" if pinned else f"{url}.sha1"
    raise InstallError(
        f"checksum mismatch for {url}: SHA-1 {actual}, {source} says {expected}; nothing installed"
    )


@dataclass(frozen=True)
class _Client:
    """HTTP with a timeout per read, retries with exponential backoff after network errors, none after 4xx."""

    timeout: float
    retries: int
    backoff: float
    progress: bool

    def published_sha1(self, url: str) -> str:
        sha1_url = f"{url}.sha1"
        text = self._retrying(sha1_url, lambda: self._read_small(sha1_url))
        digest = _parse_digest(text)
        if digest is None:
            raise InstallError(f"{sha1_url} does not hold a SHA-1 digest (starts {text[:40]!r})")
        return digest

    def download(self, url: str, part: Path) -> int:
        """Fetch `url` into `part`, continuing what it already holds; return the offset it continued from."""
        return self._retrying(url, lambda: self._download_once(url, part))

    def _retrying(self, url: str, attempt: Callable):
        for number in range(self.retries + 1):
            try:
                return attempt()
            except urllib.error.HTTPError as err:
                if err.code in PERMANENT_STATUS:
                    raise InstallError(f"HTTP {err.code} {err.reason}: {url}") from None
                failure = f"HTTP {err.code} {err.reason}"
            except _NETWORK_ERRORS as err:
                failure = str(getattr(err, "reason", None) or err) or type(err).__name__
            if number < self.retries:
                time.sleep(self.backoff * 2**number)
        raise InstallError(f"cannot download {url}: {failure} ({self.retries + 1} attempt(s))")

    def _open(self, url: str, offset: int = 0) -> http.client.HTTPResponse:
        headers = {"User-Agent": USER_AGENT} | ({"Range": f"bytes={offset}-"} if offset else {})
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout)

    def _read_small(self, url: str) -> str:
        with self._open(url) as response:
            return response.read(4096).decode("ascii", errors="replace")

    def _download_once(self, url: str, part: Path) -> int:
        offset = part.stat().st_size if part.is_file() else 0
        try:
            response = self._open(url, offset)
        except urllib.error.HTTPError as err:
            if err.code != 416 or not offset:
                raise
            part.unlink()  # longer than the file on the server: not a prefix of it
            return self._download_once(url, part)
        with response:
            if response.status == 206 and not _range_starts_at(response, offset):
                part.unlink()
                raise ConnectionError(
                    f"asked for bytes from {offset}, got {response.headers['Content-Range']}"
                )
            if response.status != 206:  # the server ignored the Range header: start again
                offset = 0
            length = response.headers.get("Content-Length")
            received = self._copy(response, part, offset, None if length is None else offset + int(length))
        if length is not None and received != int(length):
            raise ConnectionError(
                f"connection closed after {offset + received} of {offset + int(length)} bytes"
            )
        return offset

    def _copy(self, response, part: Path, offset: int, total: int | None) -> int:
        from tqdm import tqdm

        received = 0
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                desc=part.stem,
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                disable=not self.progress,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so a crash cannot leave a short jar in place
        return received


def _range_starts_at(response: http.client.HTTPResponse, offset: int) -> bool:
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", response.headers.get("Content-Range", "").strip())
    return match is not None and int(match.group(1)) == offset


def _check_writable(lib_dir: Path) -> None:
    """Fail before any download when the jars could not be saved (a read-only venv's pycocoevalcap folder)."""
    try:
        lib_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=lib_dir):
            pass
    except OSError as err:
        raise InstallError(
            f"cannot write to {lib_dir} ({err.strerror or err}): pick a writable folder (--lib-dir DIR) and "
            f"set {coco_caption.SPICE_LIB_ENV}=DIR so SPICE looks there"
        ) from None


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_digest(text: str) -> str | None:
    """The digest of a Maven `.sha1` file: 40 hex digits, sometimes followed by the file name."""
    words = text.split()
    return words[0].lower() if words and re.fullmatch(r"[0-9a-fA-F]{40}", words[0]) else None


def _read_digest(record: Path) -> str | None:
    try:
        return _parse_digest(record.read_text(encoding="ascii", errors="replace"))
    except FileNotFoundError:
        return None


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# --- the command -------------------------------------------------------------------------------------------
