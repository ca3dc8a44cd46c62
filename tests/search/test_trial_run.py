"""One trial as the worker runs it (real SQLite storage with heartbeats)."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.stop import StopRequested
from search.trial_run import run_trial
from search.worker import retry_interrupted
from storage import open_storage
from storage.errors import StorageUnreachable


class TrialError(Exception):
    """An error that fails only its trial (as a CUDA OOM does)."""


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 't.db'}", heartbeat_interval=1, max_retry=2)
    return optuna.create_study(study_name="t", storage=storage, direction="maximize")


def objective(outcome: BaseException | None):
    def run(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        trial.report(0.25, step=0)
        if outcome is not None:
            raise outcome
        return x

    return run


def test_complete_pruned_and_caught_failures_are_told(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "heartbeat ... supposed to be used" warning
        done = run_trial(study, objective(None), catch=(TrialError,))
    assert done.state == TrialState.COMPLETE and done.value == done.params["x"]
    pruned = run_trial(study, objective(optuna.TrialPruned()), catch=(TrialError,))
    assert (pruned.state, pruned.value) == (TrialState.PRUNED, 0.25)  # its last report
    failed = run_trial(study, objective(TrialError("out of memory")), catch=(TrialError,))
    assert failed.state == TrialState.FAIL  # and no exception: the worker goes on
    assert [t.state for t in study.get_trials()] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
    ]


def test_an_uncaught_error_fails_the_trial_and_is_raised(study: optuna.Study) -> None:
    with pytest.raises(ValueError, match="a bug"):
        run_trial(study, objective(ValueError("a bug")), catch=(TrialError,))
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]


@pytest.mark.parametrize("interruption", [StopRequested("SIGTERM"), StorageUnreachable("gone")])
def test_an_interrupted_trial_is_handed_back_in_one_step(
    study: optuna.Study, interruption: BaseException
) -> None:
    current = {}

    def remember(trial: optuna.Trial) -> float:
        current["trial"] = trial
        return objective(interruption)(trial)

    with pytest.raises(type(interruption)):
        run_trial(study, remember, catch=(TrialError,))
    # Not failed by Optuna: a worker killed now leaves a stale RUNNING trial, retried later.
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    retry_interrupted(study._storage._backend, current["trial"])  # FAIL + retry at once
    original, retry = study.get_trials()
    assert (original.state, retry.state) == (TrialState.FAIL, TrialState.WAITING)
    assert retry.params == original.params
    assert retry.system_attrs["failed_trial"] == original.number
    retry_interrupted(study._storage._backend, current["trial"])  # repeated: no second retry
    assert len(study.get_trials()) == 2
