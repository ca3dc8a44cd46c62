"""Resolve and validate the storage URL once, at the edge.

Precedence: the ``--storage`` flag, then the ``FOCALTUNE_STORAGE`` environment variable,
then the config's ``study.storage``, then ``sqlite:///focaltune.db`` in the working folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from storage.errors import BadStorage
from storage.secrets import mask_secrets, mask_url, remember_url

ENV_VAR = "FOCALTUNE_STORAGE"
DEFAULT_URL = "sqlite:///focaltune.db"
BACKENDS = ("sqlite", "postgresql", "mysql")
EXAMPLES = "e.g. sqlite:///focaltune.db or postgresql+psycopg://user:password@host:5432/db"
# Only psycopg 3 is installed: SQLAlchemy's plain "postgresql://" means psycopg2.
_POSTGRES_ALIASES = ("postgres", "postgresql")


def resolve_url(cli: str | None, config: str | None) -> str:
    """The storage URL from the flag, the environment, the config or the default."""
    sources = (("--storage", cli), (ENV_VAR, os.environ.get(ENV_VAR)), ("study.storage", config))
    for source, value in sources:
        if value and value.strip():
            return normalize_url(value.strip(), source)
    return DEFAULT_URL


def normalize_url(url: str, source: str = "storage URL") -> str:
    """Check ``url`` (from ``source``) and give PostgreSQL URLs the psycopg 3 driver.

    Its password is remembered first, so no later message (a driver's too) can show it.
    """
    remember_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as err:
        raise BadStorage(
            f"malformed storage URL {mask_secrets(url)!r} (from {source}): "
            f"{mask_secrets(str(err))}; write it as {EXAMPLES}"
        ) from None
    if "@" in (parsed.host or ""):
        # SQLAlchemy splits at the first "@": the rest of the password would become the host.
        raise BadStorage(
            f"the password in storage URL {mask_url(url)!r} (from {source}) holds a raw '@'; "
            "percent-encode it as %40 (and ':' as %3A, '/' as %2F)"
        )
    backend = parsed.get_backend_name()
    if parsed.drivername in _POSTGRES_ALIASES:
        # Rewrite the scheme only, so the rest of the URL stays byte for byte as given.
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if backend not in BACKENDS:
        raise BadStorage(
            f"unsupported storage backend {backend!r} in {mask_url(url)!r} (from {source}): "
            f"use one of {', '.join(BACKENDS)}, {EXAMPLES}"
        )
    return url


def sqlite_path(url: str) -> Path | None:
    """The SQLite file of ``url``; None for other backends and in-memory databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def describe(url: str) -> str:
    """A short, password-free description of ``url`` for messages."""
    path = sqlite_path(url)
    if path is not None:
        return f"SQLite file {path.resolve()} ({url})"
    return mask_url(url)
