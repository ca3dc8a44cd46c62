"""Dead trials: found (including those that never beat), failed and retried in one go.

Optuna fails a RUNNING trial whose heartbeat went quiet, but skips one that never beat.
A worker killed between creating its trial and the heartbeat thread's first beat (the
rest of ``study.ask``: reading the trial back, the sampler's ``before_trial``) leaves
such a trial, and it would stay RUNNING for ever: holding a place in the budget, so
the other workers wait for it and the study never ends. A RUNNING trial with no
heartbeat that started more than a grace period ago is as dead as a stale one.

Optuna's ``optuna.storages.fail_stale_trials`` marks a stale trial FAIL in one
transaction and only then, in a second one, its ``RetryHeartbeatStaleTrialCallback``
enqueues the WAITING copy that reruns its parameters. A worker killed between the two
(workers run this in their loop, and are killed: preemption, OOM) leaves a FAIL trial
and no retry; nothing ever looks at a FAIL trial again, so the trial is lost. Here the
failure and its retry are one transaction: a kill leaves both or neither, and neither is
a trial still RUNNING and stale, which the next worker repairs. ``study.optimize`` runs
Optuna's two-step pass before every trial too; focaltune's storage shows it no stale
trial (``OutageTolerantStorage._get_stale_trial_ids``), so this is the only repair.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState


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


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """``optuna.storages.fail_stale_trials``, each failure and its retry in one transaction.

    Returns the ids of the trials this call failed (not those another worker failed first).
    Does nothing, and returns ``[]``, when the study's storage has no heartbeat.
    """
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # a study's RDBStorage sits in a cache
    if not isinstance(backend, optuna.storages.RDBStorage):
        # No transaction of ours to open: Optuna's two steps (a no-op without heartbeats).
        optuna.storages.fail_stale_trials(study)
        return []
    if backend.get_heartbeat_interval() is None:
        return []
    # focaltune's storage: stale and never-beaten trials (and Optuna's own pass sees none).
    find = getattr(backend, "stale_trial_ids", backend._get_stale_trial_ids)
    failed = [tid for tid in find(study._study_id) if _fail_and_retry(backend, tid)[0]]
    callback = backend.get_heartbeat_stale_trial_callback()
    if callback is not None and not isinstance(callback, RetryHeartbeatStaleTrialCallback):
        # A callback we cannot run inside the transaction: after it, as Optuna does.
        for trial_id in failed:
            callback(study, backend.get_trial(trial_id))
    # The cache needs no help: it re-reads every trial it last saw unfinished, and the retry
    # has a newer id than any trial it holds.
    return failed


def fail_and_retry(storage: optuna.storages.RDBStorage, trial_id: int) -> int | None:
    """Fail the RUNNING trial ``trial_id`` and enqueue its retry, in one transaction.

    The retry is what the storage's ``RetryHeartbeatStaleTrialCallback`` would enqueue (none
    when there is no such callback or the trial was retried ``max_retry`` times already).
    Returns the retry's trial id, or None: no retry, or the trial was no longer RUNNING
    (another worker failed it). Safe to repeat, so an outage of the database is waited out.
    """
    return _fail_and_retry(storage, trial_id)[1]


def _fail_and_retry(storage: optuna.storages.RDBStorage, trial_id: int) -> tuple[bool, int | None]:
    """(whether this call failed the trial, the retry's id or None)."""
    # Imported here: storage.outage imports this module for never_beaten.
    from storage.outage import wait_for_storage

    # Repeating is safe: the transaction either committed (the repeat finds the trial FAIL
    # and does nothing) or did not (nothing happened). (False, None) then, after a lost answer.
    return wait_for_storage(
        functools.partial(_transaction, storage, trial_id),
        outage_seconds=getattr(storage, "outage_seconds", 0),
        what="fail_stale_trials",
    )


def _transaction(storage: optuna.storages.RDBStorage, trial_id: int) -> tuple[bool, int | None]:
    trials = models.TrialModel
    # Not ignoring IntegrityError (Optuna's _create_new_trial does not either): it would roll
    # back the failure with the retry, and we would report a repair that did not happen.
    with _create_scoped_session(storage.scoped_session) as session:
        study_id = session.query(trials.study_id).filter(trials.trial_id == trial_id).scalar()
        if study_id is None:
            return False, None
        # The study's row, then the trial's: the order of Optuna's _create_new_trial, which
        # locks the study to number its new trial (as _get_prepared_new_trial below does), so
        # a repairer and a worker creating a trial wait for each other, never deadlock.
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        # Compare-and-set rather than reading the state first: SQLite ignores FOR UPDATE and
        # its reads take no lock, so two repairers would both read RUNNING and both retry.
        # The UPDATE is what waits for the other writer, then finds the trial FAIL.
        changed = (
            session.query(trials)
            .filter(trials.trial_id == trial_id, trials.state == TrialState.RUNNING)
            .update({trials.state: TrialState.FAIL}, synchronize_session=False)
        )
        if not changed:
            return False, None  # finished, or failed by another worker: nothing to do
        trial = trials.find_or_raise_by_id(trial_id, session, for_update=True)
        trial.datetime_complete = datetime.now()  # as set_trial_state_values sets it
        session.flush()
        failed = storage._build_frozen_trial_from_trial_model(trial)
        template = retry_template(storage.get_heartbeat_stale_trial_callback(), failed)
        if template is None:
            return True, None
        retry = storage._get_prepared_new_trial(study_id, template, session)
        session.flush()
        return True, retry.trial_id


def retry_template(callback: object, trial: FrozenTrial) -> FrozenTrial | None:
    """The WAITING copy of the failed ``trial`` that ``callback`` would add, or None."""
    if not isinstance(callback, RetryHeartbeatStaleTrialCallback):
        return None
    # RetryHeartbeatStaleTrialCallback.__call__'s rule and copy; it adds the copy through
    # study.add_trial, a transaction of its own, which is the window this module closes.
    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    max_retry = callback._max_retry
    if max_retry is not None and max_retry < len(system_attrs["retry_history"]):
        return None
    return optuna.trial.create_trial(  # validates it, as study.add_trial does
        state=TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=trial.user_attrs,
        system_attrs=system_attrs,
        intermediate_values=(
            trial.intermediate_values if callback._inherit_intermediate_values else None
        ),
    )
