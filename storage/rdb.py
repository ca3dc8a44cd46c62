"""Open an Optuna ``RDBStorage`` with engine settings and heartbeats that suit many workers.

SQLite: WAL journal (readers never block the writer; persistent in the file) and a busy
timeout on every connection, because Optuna sets neither and parallel workers otherwise
fail with "database is locked" (optuna#820). PostgreSQL: a small pool per worker with
``pool_pre_ping``, so a restarted server or a dropped idle connection is not fatal, and
no server-side prepared statements, so the same URL works through PgBouncer's
transaction pooling (1.18 cannot route them; the README's "Many workers" section).
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
    check_heartbeat(heartbeat_interval, grace_period)
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
    try:
        storage = OutageTolerantStorage(
            url, engine_kwargs=engine_kwargs(url, pool_size), skip_compatibility_check=True
        )
        try:
            check_schema(storage, url)
            if heartbeat_interval is not None and path is None:
                hold_connections(storage, pool_size)
        except BaseException:
            storage.engine.dispose()  # a refused storage keeps no connection open
            raise
    except optuna.exceptions.StorageInternalError as err:
        # Optuna's wrapping of a failed query (its schema check): the driver's reason.
        raise BadStorage(_connection_message(url, err.__cause__ or err)) from err
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:
        raise BadStorage(_connection_message(url, err)) from err
    if heartbeat_interval is not None:
        set_heartbeat(storage, heartbeat_interval, grace_period, max_retry)
    # A SQLite file has no server to come back; its lock waits are the busy timeout's job.
    storage.outage_seconds = 0 if path is not None else limit
    return storage


def check_heartbeat(interval: int | None, grace_period: int) -> None:
    if interval is not None and not 0 < interval < grace_period:
        raise ValueError(
            f"heartbeat_interval={interval} and grace_period={grace_period}: need "
            "0 < heartbeat_interval < grace_period, or live trials are failed as stale"
        )


def set_heartbeat(
    storage: optuna.storages.RDBStorage, interval: int, grace_period: int, max_retry: int
) -> None:
    """Give an open storage heartbeats and the retry of stale trials, as the constructor's
    arguments of the same names would: a worker learns them from the study it has loaded
    through this same storage, so it needs no second engine (nor its connections) to read them.
    """
    check_heartbeat(interval, grace_period)
    with warnings.catch_warnings():
        # The retry callback is marked experimental; we use it on purpose.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    storage.heartbeat_interval, storage.grace_period = interval, grace_period
    storage.heartbeat_stale_trial_callback = storage.failed_trial_callback = retry


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
        if sqlalchemy.engine.make_url(url).get_driver_name() == "psycopg":
            # psycopg prepares a statement after 5 runs; through PgBouncer in transaction
            # mode the next transaction may land on a server that never saw it.
            kwargs["connect_args"]["prepare_threshold"] = None
    return kwargs


def check_schema(storage: optuna.storages.RDBStorage, url: str) -> None:
    """Optuna's schema version check, one connection at a time.

    Optuna's own check reads the schema's revision on a second connection while its first
    holds a transaction. Behind PgBouncer in transaction mode each of those is a server
    connection: workers starting together, as many as the pool's server connections, each
    hold one and wait for another, for ever (seen with 128 workers and a pool of 20).
    """
    manager = storage._version_manager
    current, head = manager.get_current_version(), manager.get_head_version()
    if current != head:
        raise BadStorage(
            f"the tables in {describe(url)} are at Optuna schema revision {current}, but "
            f"optuna {optuna.__version__} needs {head}: upgrade them with `optuna storage "
            "upgrade --storage URL`, or install the optuna version that wrote them"
        )


def hold_connections(storage: optuna.storages.RDBStorage, n: int) -> None:
    """Open the worker's ``n`` pooled connections now (the trial's and the heartbeat's).

    A server at its connection limit then refuses the worker before it creates a trial,
    rather than the heartbeat thread later, which would leave its trial RUNNING until
    another worker's grace period runs out.
    """
    connections = []
    try:
        for _ in range(n):
            # No transaction stays open here (SQLAlchemy pings in autocommit), so behind
            # PgBouncer no server connection is pinned while the next one is opened.
            connections.append(storage.engine.connect())
    finally:
        for connection in connections:
            connection.close()  # back to the pool, still open


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
    if "too many clients" in text or "connection slots are reserved" in text:
        return (
            "the server's connection limit (max_connections) is reached; each worker holds 2 "
            "connections: route workers through PgBouncer (README 'Many workers'; `make "
            "db-up` starts one locally) or raise max_connections or run fewer workers"
        )
    if "max_client_conn" in text:
        return "PgBouncer's client limit is reached: raise max_client_conn in pgbouncer.ini"
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
