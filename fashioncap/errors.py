"""Errors the user can fix, and the one boundary every command runs behind.

A `UserError` reaches the user as one line, `fashioncap COMMAND: error: WHAT (where; how to fix)`, and exit
status 2, from the main process only (under `accelerate launch` every rank raises it, and the line goes into the
launcher's failure report: `report_to_launcher`). Any other
exception is a bug and keeps its traceback; `--debug` (before or after COMMAND) or FASHIONCAP_DEBUG=1 shows the
traceback of a user error too. This module imports only the standard library: every layer may raise these.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

DEBUG_ENV = "FASHIONCAP_DEBUG"
ELASTIC_ERROR_FILE_ENV = (
    "TORCHELASTIC_ERROR_FILE"  # set for each rank by torchrun's agent (accelerate launch)
)
USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem with what the user gave (recipe, path, file, environment); the message says how to fix it."""


class ConfigError(UserError, ValueError):
    """A recipe key or value, or a command-line option, that cannot be used."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """Writing would replace something that is only replaced when the user asks for it."""


class MissingDependencyError(UserError, RuntimeError):
    """A tool or model outside the Python packages (Java, the spaCy model) is missing; the message says how to
    get it."""


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest single-character insertions, deletions and substitutions."""
    row = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, char_b in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (char_a != char_b))
    return row[-1]


def closest_match(word: str, candidates: Iterable[str]) -> str | None:
    """Of the candidates difflib finds close to `word`, the one fewest edits away (then the most alike, then
    the first by name): difflib alone breaks a tie by the larger name, so `00000.png` got `000002.png` although
    `000000.png` is one insertion away."""
    candidates = sorted(set(candidates))
    close = difflib.get_close_matches(word, candidates, n=max(len(candidates), 1))
    return min(
        close,
        key=lambda c: (edit_distance(word, c), -difflib.SequenceMatcher(None, word, c).ratio(), c),
        default=None,
    )


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest candidate, or '' when none is close."""
    match = closest_match(word, candidates)
    return f" (did you mean {match}?)" if match else ""


def closest_existing_path(path: str | os.PathLike) -> Path | None:
    """The existing path nearest to `path`, each missing part replaced by its closest sibling, or None."""
    path = Path(path)
    found, parts = (Path(path.anchor), path.parts[1:]) if path.is_absolute() else (Path(), path.parts)
    for part in parts:
        if not (found / part).exists():
            siblings = [p.name for p in found.iterdir()] if found.is_dir() else []
            part = closest_match(part, siblings)
            if part is None:
                return None
        found = found / part
    return found if found != path else None


def closest_path_hint(path: str | os.PathLike) -> str:
    """' (did you mean CLOSEST?)' for the existing path nearest to `path`, or '' when none is close."""
    closest = closest_existing_path(path)
    return f" (did you mean {closest}?)" if closest else ""


def missing_path(what: str, path: str | os.PathLike, how_to_fix: str = "") -> MissingPathError:
    """'WHAT PATH does not exist (did you mean CLOSEST?)', plus `how_to_fix` when given."""
    return MissingPathError(
        f"{what} {path} does not exist{closest_path_hint(path)}" + (f"; {how_to_fix}" if how_to_fix else "")
    )


def debug_requested(flag: bool = False) -> bool:
    """`--debug` or FASHIONCAP_DEBUG set to anything but empty/0/false/no."""
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """(argv without `--debug`, whether it was there): `--debug` is the traceback switch wherever it stands, so
    `fashioncap train --config x --debug` does not become a recipe override of the Trainer's `debug` option
    (set that one in the recipe file)."""
    return [arg for arg in argv if arg != "--debug"], "--debug" in argv


def is_main_process() -> bool:
    """True outside a distributed launch and on rank 0 within one (accelerate and torchrun set RANK)."""
    return os.environ.get("RANK", "0") in ("", "0")


def run_command(command: str, func: Callable[..., int | None], *args, debug: bool = False) -> int:
    """Run `func(*args)`; a UserError becomes one line on stderr (main process only) and exit status 2."""
    try:
        code = int(func(*args) or 0)
    except UserError as err:
        if debug_requested(debug):
            raise
        if is_main_process():
            message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            line = f"fashioncap {command}: error: {message}"
            if not report_to_launcher(line):
                print(line, file=sys.stderr, flush=True)
        code = USER_ERROR_EXIT
    leave_distributed_run(code)
    return code


def report_to_launcher(line: str) -> bool:
    """Under `accelerate launch` (torchrun), hand `line` to the launcher instead of printing it; True if done.

    The launcher prints its failure report (ChildFailedError) after every rank has exited, so a line printed by
    a rank is followed by it. The report's last entry, its root cause, is the failed rank's error file
    (TORCHELASTIC_ERROR_FILE, torchelastic's JSON) or else "To enable traceback see ...": written there, the
    one-line error is the last thing the user reads (only the report's closing border follows)."""
    path = os.environ.get(ELASTIC_ERROR_FILE_ENV)
    if not path:
        return False
    record = {"message": {"message": line, "extraInfo": {"timestamp": str(int(time.time()))}}}
    Path(path).write_text(json.dumps(record), encoding="utf-8")
    return True


def leave_distributed_run(code: int) -> None:
    """Under `accelerate launch`, end every rank together once the command is done, without interpreter
    teardown: a rank tearing down its gloo process group while a peer still closes its own was seen to abort
    ("terminate called without an active exception", exit -6) after the work was written. Nothing here in a
    single process, or when the command failed before the ranks could meet (a UserError raised on every rank
    alike still meets)."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return
    if distributed.get_world_size() < 2:
        return
    distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
