"""A worker: loads a study by storage URL and name, runs trials until the budget is met.

The budget (``study.n_trials``) counts COMPLETE + PRUNED trials of all workers. A
worker starts a trial only while finished + running trials are below the budget, and
a trial that still finds the budget covered by lower-numbered trials, finished, running
or waiting (two workers starting at the same instant, a retry enqueued meanwhile), ends
at once as "not run", so the study never overshoots. Workers
wait for running trials rather than exit, because one of them may die and come back
as a retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from search.config import StudyConfig
from search.stop import StopSignals
from search.study import load_existing, make_pruner, make_sampler, stored_config
from search.trial_run import run_trial
from storage import open_storage
from storage.counts import count_below, state_counts
from storage.errors import StorageUnreachable
from storage.outage import OutageTolerantStorage, is_connection_error, unreachable_in
from storage.rdb import set_heartbeat
from storage.stale import fail_and_retry, fail_stale_trials

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class BudgetReached(Exception):
    """This trial is beyond the study's budget: lower-numbered trials cover it."""


@dataclass
class WorkerSummary:
    trials_run: int
    stopped_by: str


@dataclass
class TrialRunner:
    """What a worker runs per trial: the objective, the errors that fail only the trial
    (the worker goes on), and what to do after each trial."""

    objective: Callable[[optuna.Trial], float]
    errors: tuple[type[Exception], ...] = ()
    after_trial: Callable[[], None] = field(default=lambda: None)


def training_runner(cfg: StudyConfig, study: optuna.Study, url: str) -> TrialRunner:
    """The product's runner: train a classifier per trial."""
    # Imported here, not at the top: torch and transformers are the objective's, not the
    # loop's, and a synthetic objective (benchmarks/scale.py) runs 128 loops without them.
    from search.objective import TRIAL_ERRORS, free_memory, make_objective
    from search.reporting import make_trial_reporter
    from trainer.data import load_splits

    reporter = make_trial_reporter(study, cfg, url)
    objective = make_objective(cfg, load_splits(cfg.data), on_trial_end=reporter)
    return TrialRunner(objective, TRIAL_ERRORS, free_memory)


def open_study(
    url: str, name: str, worker_index: int
) -> tuple[optuna.Study, StudyConfig, OutageTolerantStorage]:
    """Load the study with a heartbeat storage set up from the study's own config."""
    # One storage, one pool: its heartbeat settings are the study's, read through it first
    # (no trial runs before they are set), so a worker opens just its 2 connections.
    storage = open_storage(url, existing=True)
    cfg = stored_config(load_existing(url, name, storage))
    s = cfg.study
    set_heartbeat(storage, s.heartbeat_interval, s.grace_period, s.max_retry)
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(cfg, worker_index),
        pruner=make_pruner(cfg),
    )
    return study, cfg, storage


def counts(study: optuna.Study) -> dict[TrialState, int]:
    return state_counts(study)  # counted in the database: loading trials grows as workers²


def ahead_of(study: optuna.Study, number: int) -> int:
    """Trials numbered below ``number`` that are finished or will be: running or waiting.

    Waiting ones count too: a retry enqueued a moment before this trial was created is
    still waiting when this trial checks, and would otherwise run as one trial too many.
    """
    return count_below(study, number, (*FINISHED, TrialState.RUNNING, TrialState.WAITING))


def trial_line(trial: FrozenTrial) -> str:
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        value = f"{max(trial.intermediate_values.values()):.4f}"
    seconds = (trial.duration.total_seconds()) if trial.duration else 0.0
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    reason = trial.user_attrs.get("end_reason", "")
    return (
        f"trial {trial.number:>3} {trial.state.name:<8} acc {value} {seconds:6.1f}s "
        f"[{params}] {reason}"
    )


def run_worker(
    url: str,
    name: str,
    *,
    worker_index: int = 0,
    n_trials: int | None = None,
    timeout: float | None = None,
    poll_seconds: float = 2.0,
    echo: Callable[[str], None] = print,
    make_runner: Callable[[StudyConfig, optuna.Study, str], TrialRunner] = training_runner,
) -> WorkerSummary:
    """Run trials of study ``name`` until its budget, ``n_trials`` or ``timeout`` is reached."""
    study, cfg, storage = open_study(url, name, worker_index)
    budget = cfg.study.n_trials
    runner = make_runner(cfg, study, url)
    current: dict[str, optuna.Trial] = {}
    stops = StopSignals()

    def guarded(trial: optuna.Trial) -> float:
        current["trial"] = trial
        with stops.raising():
            if ahead_of(study, trial.number) >= budget:
                trial.set_user_attr("end_reason", "not run: the budget was met by other trials")
                raise BudgetReached(f"budget {budget} met")
            return runner.objective(trial)

    stops.install()
    started, ran = time.monotonic(), 0
    try:
        while True:
            stops.check()
            if n_trials is not None and ran >= n_trials:
                return WorkerSummary(ran, "n_trials")
            if timeout is not None and time.monotonic() - started >= timeout:
                return WorkerSummary(ran, "timeout")
            try:
                step = next_step(study, budget)
                if step == "wait":
                    time.sleep(poll_seconds)  # a running trial may still fail and be retried
                    continue
                if step == "done":
                    return WorkerSummary(ran, "budget")
                echo(trial_line(run_trial(study, guarded, (*runner.errors, BudgetReached))))
                runner.after_trial()  # here, once the trial's exception (if any) is gone
                current.clear()  # finished: a later stop must not retry it
                ran += 1
            except STORAGE_ERRORS as err:
                if not is_connection_error(err) or storage.outage_seconds <= 0:
                    raise
                # Creating or finishing a trial found no database. A trial left RUNNING
                # stops beating and is failed and retried after the grace period. The
                # next round's reads wait for the server (up to the storage's limit).
                echo("database unreachable; waiting for it to come back")
            except Exception as err:
                if (gone := unreachable_in(err)) is None:
                    raise
                raise gone from None
    except StorageUnreachable:
        retry_interrupted(storage, current.get("trial"), best_effort=True)
        raise
    except KeyboardInterrupt as stop:
        retry_interrupted(storage, current.get("trial"))
        echo(f"worker stopped: {stop or 'interrupted'}")
        return WorkerSummary(ran, "signal")


STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


def next_step(study: optuna.Study, budget: int) -> str:
    """ "done" when the budget is met, "wait" while running trials may still cover it,
    "run" otherwise; fails stale trials (their retries are WAITING) first."""
    fail_stale_trials(study)  # each failure and its retry in one transaction
    c = counts(study)
    done = c[TrialState.COMPLETE] + c[TrialState.PRUNED]
    if done >= budget:
        return "done"
    if done + c[TrialState.RUNNING] >= budget and not c[TrialState.WAITING]:
        return "wait"
    return "run"


def retry_interrupted(
    storage: OutageTolerantStorage, trial: optuna.Trial | None, best_effort: bool = False
) -> None:
    """Fail an interrupted trial (``run_trial`` left it RUNNING) and enqueue its retry, in
    one transaction; nothing if it is finished already.

    ``best_effort``: the database may be gone; a trial it cannot fail stays RUNNING,
    and the other workers fail and retry it once its heartbeat is stale.
    """
    if trial is None:
        return
    try:
        fail_and_retry(storage, trial._trial_id)
    except (*STORAGE_ERRORS, StorageUnreachable):
        if not best_effort:
            raise
