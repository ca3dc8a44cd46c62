"""Files a command writes: checked before any work, then written atomically.

``check_output`` is the one gate every writing command passes its output through before it
starts: the output must not be (through links, relative paths or hard links), lie inside or
contain one of the command's inputs, its database or its bundle; it must be of the right
kind (file or folder) and its folder writable. ``write_text_atomic`` then writes it so that
a reader (or a crash) never sees a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from storage import sqlite_path
from trainer.errors import BadInput
from trainer.files import atomic_file

# (what the input is, where it is); None entries (an optional input not given) are skipped.
Inputs = Iterable[tuple[str, str | Path | None]]
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def database_inputs(url: str) -> list[tuple[str, Path]]:
    """The files of a SQLite storage URL (the database and its WAL, shared-memory and journal
    files); none for a server database."""
    path = sqlite_path(url)
    if path is None:
        return []
    side = [path.with_name(path.name + suffix) for suffix in SQLITE_SIDE_FILES]
    return [("the study's database", p) for p in (path, *side)]


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # hard links too
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _within(child: Path, folder: Path) -> bool:
    return child.resolve().is_relative_to(folder.resolve())


def _overlap(out: Path, flag: str, what: str, path: Path, folder: bool) -> str | None:
    """Why writing ``out`` would destroy the input ``path``, or None."""
    if _same(out, path):
        return f"{flag} {out} is {what} ({path.resolve()}); writing it would destroy it"
    if path.is_dir() and _within(out, path):
        return f"{flag} {out} lies inside {what} ({path.resolve()}); writing it would change it"
    if folder and _within(path, out):
        return f"{flag} {out} contains {what} ({path.resolve()}); replacing it would delete it"
    return None


def _check_kind(out: Path, flag: str, folder: bool) -> None:
    if not folder and out.is_dir():
        raise BadInput(f"{flag} {out} is a folder; give a file path (a new name or a file)")
    if folder and out.exists() and not out.is_dir():
        raise BadInput(f"{flag} {out} is an existing file; give a folder path")


def _check_writable(out: Path, flag: str, folder: bool) -> None:
    """The nearest existing folder above ``out`` (and ``out`` itself, for an existing output
    folder) must be a folder this process can create files in."""
    start = out.absolute()
    existing = next(p for p in start.parents if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise BadInput(
            f"{flag} {out} lies under {existing}, which is a file, not a folder; "
            "choose a path in a folder"
        )
    for place in [existing, *([start] if folder and start.is_dir() else [])]:
        try:
            with tempfile.TemporaryFile(dir=place):  # O_TMPFILE: no name ever appears
                pass
        except OSError as err:
            raise BadInput(
                f"{flag} {out}: cannot write in {place} ({err.strerror}); "
                "choose a writable location"
            ) from None


def check_output(
    out: str | Path, flag: str, inputs: Inputs, *, folder: bool = False, probe: bool = True
) -> Path:
    """Refuse an output that would destroy an input or fail after the work; see module doc.

    ``folder``: the output is a folder (that may be replaced whole), not a file.
    ``probe``: check that its folder is writable (off where the caller checks it itself).
    """
    out = Path(out).expanduser()
    _check_kind(out, flag, folder)
    for what, path in inputs:
        if path is None or str(path) == "":
            continue
        reason = _overlap(out, flag, what, Path(path).expanduser(), folder)
        if reason:
            raise BadInput(f"{reason}; choose another {flag} path")
    if probe:
        _check_writable(out, flag, folder)
    return out


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def local_absolute(name_or_path: str) -> str:
    """A backbone folder as an absolute path; a Hub name (no such folder) unchanged."""
    return str(Path(name_or_path).resolve()) if Path(name_or_path).is_dir() else name_or_path
