"""Writing files and folders so that nobody (a reader, a dashboard, a crash) sees half of one.

``atomic_file``: a file is written to a temp file in its own folder and renamed over the
destination with ``os.replace``. ``staged_folder``: a folder is built in a staging folder
beside its destination and renamed into place. Either way a failure removes the temp copy
and leaves the destination as it was. Same folder, so the rename never crosses file systems.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; it replaces ``path`` when the block ends.

    The temp file exists (empty) when the block starts; an exception in the block removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_file_beside(path: Path) -> Path:
    """A new, empty ``.<name>.<random>.tmp`` beside ``path``. Made with the mode a plain
    ``open()`` gives (0666 less the umask), not mkstemp's 0600: a dashboard or a colleague
    running as another user must be able to read what the rename publishes."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # a 48-bit name taken: practically never; draw another
            continue
        return tmp


def staging_folder(out: str | Path) -> Path:
    """A fresh, empty folder beside ``out`` (same file system, so a rename into place is
    atomic), named ``.<out name>.tmp-<random>`` so it is hidden and recognisable."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


@contextmanager
def staged_folder(
    out: str | Path, publish: Callable[[Path, Path], object] = os.rename
) -> Iterator[Path]:
    """A staging folder to build ``out`` in; ``publish(staging, out)`` moves it into place when
    the block ends (a plain rename unless given). The staging folder is removed on any failure,
    the block's or the publish's."""
    out = Path(out)
    staging = staging_folder(out)
    try:
        yield staging
        publish(staging, out)
    finally:
        # After a successful publish the folder is gone and this does nothing.
        shutil.rmtree(staging, ignore_errors=True)
