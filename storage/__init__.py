"""Storage for Optuna studies: URLs, engines, heartbeats, a local PostgreSQL, secret masking.

Optuna owns the schema; this package only builds URLs, engines and heartbeats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from storage.errors import BadStorage
from storage.secrets import SecretFilter, install_secret_filter, mask_secrets, mask_url
from storage.url import DEFAULT_URL, ENV_VAR, describe, normalize_url, resolve_url, sqlite_path

if TYPE_CHECKING:
    from storage.postgres import LocalPostgres, LocalPostgresError
    from storage.rdb import open_storage, warn_if_sqlite_crowded

# Imported on first use: `rdb` pulls in Optuna, and importing `postgres` here would make
# `python -m storage.postgres` run a module that is already imported.
_LAZY = {
    "open_storage": "storage.rdb",
    "warn_if_sqlite_crowded": "storage.rdb",
    "LocalPostgres": "storage.postgres",
    "LocalPostgresError": "storage.postgres",
}

__all__ = [
    "DEFAULT_URL",
    "ENV_VAR",
    "BadStorage",
    "SecretFilter",
    "describe",
    "install_secret_filter",
    "mask_secrets",
    "mask_url",
    "normalize_url",
    "resolve_url",
    "sqlite_path",
    "open_storage",
    "warn_if_sqlite_crowded",
    "LocalPostgres",
    "LocalPostgresError",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
