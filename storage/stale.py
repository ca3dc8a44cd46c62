"""Trials that died before their first heartbeat.

Optuna fails a RUNNING trial whose heartbeat went quiet, but skips one that never beat.
A worker killed between creating its trial and the heartbeat thread's first beat (the
rest of ``study.ask``: reading the trial back, the sampler's ``before_trial``) leaves
such a trial, and it would stay RUNNING for ever: holding a place in the budget, so
the other workers wait for it and the study never ends. A RUNNING trial with no
heartbeat that started more than a grace period ago is as dead as a stale one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import optuna
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState


def never_beaten(storage: optuna.storages.RDBStorage, study_id: int, grace: float) -> list[int]:
    """Ids of RUNNING trials of ``study_id`` with no heartbeat, started over ``grace`` s ago."""
    # Optuna 5 stores datetime_start as naive UTC from the worker's clock.
    cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=grace)
    trial = models.TrialModel
    with _create_scoped_session(storage.scoped_session) as session:
        rows = (
            session.query(trial.trial_id)
            .filter(trial.study_id == study_id)
            .filter(trial.state == TrialState.RUNNING)
            .filter(trial._datetime_start_utc < cutoff)
            .filter(~trial.heartbeats.any())
            .all()
        )
    return [row.trial_id for row in rows]
