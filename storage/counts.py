"""A study's trials counted by state in the database, without loading them.

The worker loop asks, for every trial, how many trials are finished, running or waiting
(the budget rule). Through Optuna's API that is ``study.get_trials()``, whose cache re-reads
every unfinished trial whole (parameters, attributes, intermediate values) on each call:
with W workers that is W running trials per question in every worker, work that grows as
W² (`make scale`: 128 workers on 2 cores finished no trial in 3 minutes). A GROUP BY over
Optuna's own trials table gives the same answer in one row per state.
"""

from __future__ import annotations

from collections.abc import Iterable

import optuna
import sqlalchemy
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState
from sqlalchemy.engine import FrozenResult

from storage.outage import wait_for_storage


def state_counts(study: optuna.Study) -> dict[TrialState, int]:
    """The number of the study's trials in each state (every state present, 0 or more)."""
    result = dict.fromkeys(TrialState, 0)
    backend = _rdb(study)
    if backend is None:  # another storage: count what Optuna returns
        for trial in study.get_trials(deepcopy=False):
            result[trial.state] += 1
        return result
    trial = models.TrialModel
    query = (
        sqlalchemy.select(trial.state, sqlalchemy.func.count())
        .where(trial.study_id == study._study_id)
        .group_by(trial.state)
    )
    for state, n in _run(backend, query).all():
        result[state] = n
    return result


def count_below(study: optuna.Study, number: int, states: Iterable[TrialState]) -> int:
    """How many of the study's trials numbered below ``number`` are in ``states``."""
    states = tuple(states)
    backend = _rdb(study)
    if backend is None:
        trials = study.get_trials(deepcopy=False, states=states)
        return sum(1 for t in trials if t.number < number)
    trial = models.TrialModel
    query = (
        sqlalchemy.select(sqlalchemy.func.count())
        .select_from(trial)
        .where(trial.study_id == study._study_id, trial.number < number, trial.state.in_(states))
    )
    return _run(backend, query).scalar_one()


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    backend = getattr(study._storage, "_backend", study._storage)  # a study's RDB is cached
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def _run(storage: optuna.storages.RDBStorage, query: sqlalchemy.Select) -> sqlalchemy.Result:
    def read() -> FrozenResult:
        with _create_scoped_session(storage.scoped_session) as session:
            return session.execute(query).freeze()  # its rows outlive the session

    # A read, so it waits out an outage like the storage's own reads.
    frozen = wait_for_storage(read, outage_seconds=getattr(storage, "outage_seconds", 0))
    return frozen()  # a fresh Result over the frozen rows
