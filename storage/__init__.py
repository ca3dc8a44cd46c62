"""Storage for Optuna studies: URLs, engines, heartbeats, secret masking.

Optuna owns the schema; this package builds URLs, engines and heartbeats, and writes a
trial's user attributes in one transaction through Optuna's own table (``attrs``). (The local
PostgreSQL server for development and tests is a tool, in ``tools/postgres.py``.)
"""

from __future__ import annotations

from storage.errors import BadStorage
from storage.rdb import open_storage, warn_if_sqlite_crowded
from storage.secrets import SecretFilter, install_secret_filter, mask_secrets, mask_url
from storage.url import DEFAULT_URL, ENV_VAR, describe, normalize_url, resolve_url, sqlite_path

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
    "open_storage",
    "resolve_url",
    "sqlite_path",
    "warn_if_sqlite_crowded",
]
