"""Open an Optuna ``RDBStorage`` with engine settings and heartbeats that suit many workers.

SQLite: WAL journal (readers never block the writer; persistent in the file) and a busy
timeout on every connection, because Optuna sets neither and parallel workers otherwise
fail with "database is locked" (optuna#820). PostgreSQL: a small pool per worker with
``pool_pre_ping``, so a restarted server or a dropped idle connection is not fatal.
Nothing is cached at module level: every worker process opens its own engine.
"""

from __future__ import annotations

import logging
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc

from storage.errors import BadStorage
from storage.outage import OutageTolerantStorage, outage_limit
from storage.secrets import mask_secrets
from storage.url import describe, normalize_url, sqlite_path

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 60.0  # how long a writer waits for the lock before "database is locked"
CONNECT_TIMEOUT_S = 10  # fail fast on an unreachable server instead of hanging


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = 20,
    grace_period: int = 60,
    max_retry: int = 3,
    pool_size: int = 2,
    outage_seconds: float | None = None,
    existing: bool = False,
) -> optuna.storages.RDBStorage:
    """An ``RDBStorage`` for ``url`` whose stale trials fail and are retried.

    A trial whose worker stops sending heartbeats (every ``heartbeat_interval`` seconds) for
    ``grace_period`` seconds is marked FAIL by the next worker, and a WAITING copy with the
    same parameters is enqueued, up to ``max_retry`` times per original trial.

    ``heartbeat_interval=None`` opens a storage without heartbeats, for readers (status,
    export, dashboard) and for creating studies.

    Reads and updates wait up to ``outage_seconds`` (default: ``outage_limit()``) for a
    database that went away (a restarted server) before they fail; see ``storage.outage``.

    Raises:
        BadStorage: the URL is malformed, or the database cannot be opened or written.
    """
    if heartbeat_interval is not None and not 0 < heartbeat_interval < grace_period:
        raise ValueError(
            f"heartbeat_interval={heartbeat_interval} and grace_period={grace_period}: need "
            "0 < heartbeat_interval < grace_period, or live trials are failed as stale"
        )
    limit = outage_limit() if outage_seconds is None else outage_seconds  # before any file
    url = normalize_url(url)
    path = sqlite_path(url)
    if path is not None and existing and not path.is_file():
        # A reader (status, export, worker, dashboard) must not create an empty database.
        raise BadStorage(
            f"SQLite file {path.resolve()} not found (from the storage URL); check --storage / "
            "FOCALTUNE_STORAGE or create the study first with `focaltune study create`"
        )
    if path is not None:
        prepare_sqlite(path)
    with warnings.catch_warnings():
        # Heartbeats and the retry callback are marked experimental; we use them on purpose.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        heartbeat: dict[str, Any] = {}
        if heartbeat_interval is not None:
            heartbeat = {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period,
                "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry
                ),
            }
        try:
            storage = OutageTolerantStorage(
                url, engine_kwargs=engine_kwargs(url, pool_size), **heartbeat
            )
        except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:
            raise BadStorage(_connection_message(url, err)) from err
    # A SQLite file has no server to come back; its lock waits are the busy timeout's job.
    storage.outage_seconds = 0 if path is not None else limit
    return storage


def engine_kwargs(url: str, pool_size: int = 2) -> dict[str, Any]:
    """SQLAlchemy ``create_engine`` arguments for ``url``'s backend."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    if backend == "sqlite":
        # sqlite3's `timeout` is sqlite3_busy_timeout(), applied to each new connection;
        # being a plain argument, it also survives Optuna pickling the storage.
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif backend == "postgresql":
        # One connection for the trial, one for the heartbeat thread; overflow for bursts.
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=3600)
        kwargs["connect_args"] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "focaltune",
        }
    return kwargs


def prepare_sqlite(path: Path) -> None:
    """Create the SQLite file's folder, switch the file to WAL and check it is writable."""
    where = f"SQLite file {path.resolve()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadStorage(
            f"cannot create the folder {path.parent} for {where}: {err.strerror}; "
            "choose a writable location in the storage URL"
        ) from err
    try:
        connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            # A write lock proves the file *and* its folder (for -wal/-shm) are writable.
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.Error as err:
        raise BadStorage(
            f"cannot write {where}: {err}; make the file and its folder writable "
            "or choose another path in the storage URL"
        ) from err
    if mode != "wal":
        logger.warning("%s stays in %s journal mode (WAL unsupported here)", where, mode)


def _connection_message(url: str, err: BaseException) -> str:
    """One line for a failed connection: the driver's reason, the masked URL and a fix."""
    reason = str(getattr(err, "orig", None) or err)
    reason = next((line.strip() for line in reason.splitlines() if line.strip()), repr(err))
    reason = reason.rstrip(".")
    return f"cannot open storage {describe(url)}: {mask_secrets(reason)}; {_hint(reason, url)}"


def _hint(reason: str, url: str) -> str:
    text = reason.lower()
    if "password" in text or "authentication" in text:
        return "check the user name and password in the storage URL"
    if "does not exist" in text and "database" in text:
        return "create the database first (createdb NAME) or fix its name in the storage URL"
    if "permission denied" in text:
        return "grant the user CREATE on the database (and its public schema) or use another user"
    if "no module named" in text or "import" in text:
        return "install the database driver, or use postgresql+psycopg:// for PostgreSQL"
    if sqlite_path(url) is not None:
        return "make the file and its folder writable or choose another path"
    return "is the server running and reachable? start a local one with `make db-up`"


def warn_if_sqlite_crowded(url: str, n_workers: int, limit: int = 4) -> str | None:
    """Log and return a warning when more than ``limit`` workers share one SQLite file."""
    path = sqlite_path(normalize_url(url))
    if path is None or n_workers <= limit:
        return None
    message = (
        f"{n_workers} workers share the SQLite file {path.resolve()}; SQLite serialises "
        f"writes and more than {limit} writers risk 'database is locked' errors. Use "
        "PostgreSQL for many workers (`make db-up` starts a local one)"
    )
    logger.warning(message)
    return message
