"""Riding out a database outage: a restarted PostgreSQL must not kill the workers.

Optuna's ``RDBStorage`` turns a dropped connection into ``StorageInternalError``; raised
from ``trial.report`` it fails the trial, and raised in the heartbeat thread it ends
that thread for good, so the live trial later looks stale. ``OutageTolerantStorage``
waits for the server instead, up to ``outage_seconds``, for the calls that are safe to
repeat: reads and upserts. ``pool_pre_ping`` replaces the dead connections on the retry.

Not repeated: creating a trial (a commit whose answer was lost would leave a second
trial with no heartbeat) and creating or deleting studies. Those errors reach the caller;
the worker loop goes round again, and its next reads wait.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc

from storage.errors import BadStorage, StorageUnreachable
from storage.stale import never_beaten

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTAGE_SECONDS = 300.0  # how long a worker waits for its database before giving up
OUTAGE_ENV = "FOCALTUNE_OUTAGE_SECONDS"  # overrides it, e.g. for a planned longer upgrade
FIRST_PAUSE_S, LONGEST_PAUSE_S = 0.5, 10.0

# Reads, and writes that set a value by key (repeating one sets the same value again).
REPEATABLE = (
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "stale_trial_ids",
    "_set_trial_param",  # a repeated insert hits the unique key, which Optuna ignores here
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "set_trial_state_values",  # a repeat after a lost answer raises UpdateFinishedTrialError
    "set_study_user_attr",
    "set_study_system_attr",
)


def outage_limit() -> float:
    """Seconds to wait for a database that went away: $FOCALTUNE_OUTAGE_SECONDS or 300."""
    raw = os.environ.get(OUTAGE_ENV, "").strip()
    try:
        seconds = float(raw) if raw else OUTAGE_SECONDS
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise BadStorage(
            f"{OUTAGE_ENV}={raw!r} is not a number of seconds >= 0; unset it or give e.g. 300"
        )
    return seconds


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and what caused it, or what it was raised while handling."""
    seen: BaseException | None = err
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def is_connection_error(err: BaseException) -> bool:
    """True when ``err`` (or what caused it) says the connection, not the query, failed."""
    for seen in _chain(err):
        if isinstance(seen, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
    return False


def unreachable_in(err: BaseException) -> StorageUnreachable | None:
    """The ``StorageUnreachable`` behind ``err``, if any: it may be the context of another
    error raised while handling it (failing the trial, reading it back)."""
    return next((seen for seen in _chain(err) if isinstance(seen, StorageUnreachable)), None)


def wait_for_storage(
    call: Callable[[], T], *, outage_seconds: float = OUTAGE_SECONDS, what: str = "storage"
) -> T:
    """``call()``, repeated with growing pauses while the database cannot be reached."""
    if outage_seconds <= 0:
        return call()
    deadline = time.monotonic() + outage_seconds
    pause, warned = FIRST_PAUSE_S, False
    while True:
        try:
            result = call()
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as err:
            if not is_connection_error(err):
                raise
            if time.monotonic() + pause > deadline:
                raise StorageUnreachable(
                    f"the database was unreachable for more than {outage_seconds:.0f} s"
                ) from err
            if not warned:
                log.warning("%s: database unreachable; retrying for %.0f s", what, outage_seconds)
                warned = True
            time.sleep(pause)
            pause = min(2 * pause, LONGEST_PAUSE_S)
        else:
            if warned:
                log.warning("%s: database reachable again", what)
            return result


class OutageTolerantStorage(optuna.storages.RDBStorage):
    """An ``RDBStorage`` whose repeatable calls wait out an outage of the database."""

    outage_seconds: float = OUTAGE_SECONDS

    def record_heartbeat(self, trial_id: int) -> None:
        # Runs in Optuna's heartbeat thread, where an exception would end the heartbeats of
        # a live trial for good. One missed beat is harmless; the next one may get through.
        try:
            super().record_heartbeat(trial_id)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as err:
            if not is_connection_error(err):
                raise
            log.warning("heartbeat of trial id %d missed: database unreachable", trial_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials (they have a heartbeat) and those that died before one."""
        grace = self.grace_period or 2 * self.heartbeat_interval  # Optuna's own default
        return super()._get_stale_trial_ids(study_id) + never_beaten(self, study_id, grace)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Read by Optuna's own stale pass, which study.optimize runs before every trial: it
        # fails a trial and enqueues its retry in two transactions, and a worker killed
        # between them loses the trial. It finds none here; storage.stale, one transaction
        # per trial, is the only repair (the worker loop runs it before each trial).
        return []


def _repeated(name: str) -> Callable[..., Any]:
    method = getattr(OutageTolerantStorage, name)  # RDBStorage's, or the override above

    @functools.wraps(method)
    def wrapper(self: OutageTolerantStorage, *args: Any, **kwargs: Any) -> Any:
        call = functools.partial(method, self, *args, **kwargs)
        return wait_for_storage(call, outage_seconds=self.outage_seconds, what=name)

    return wrapper


for _name in REPEATABLE:
    # A few of these are private to Optuna. Were one renamed by an upgrade, skipping it would
    # quietly remove the outage tolerance of that call: refuse to start instead.
    if not hasattr(OutageTolerantStorage, _name):
        raise ImportError(
            f"optuna {optuna.__version__} has no RDBStorage.{_name}, which focaltune's outage "
            "tolerance wraps; install the optuna version pyproject.toml allows"
        )
    setattr(OutageTolerantStorage, _name, _repeated(_name))
