"""Trial counts by state from the database agree with Optuna's own trials (real SQLite and
PostgreSQL), and need no trial loaded."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from storage import open_storage
from storage.counts import count_below, state_counts


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def study(request: pytest.FixtureRequest, tmp_path: Path) -> optuna.Study:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    storage = open_storage(url, heartbeat_interval=None)
    study = optuna.create_study(storage=storage, study_name="counts", direction="maximize")
    # Every state, in a mixed order of numbers.
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE):
        trial = study.ask()
        study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    study.ask()  # RUNNING
    study.enqueue_trial({"x": 0.1})
    study.ask()  # takes the enqueued trial: RUNNING
    study.enqueue_trial({"x": 0.2})  # WAITING
    return study


def test_counts_by_state_match_optunas_trials(study: optuna.Study) -> None:
    expected = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials():
        expected[trial.state] += 1
    assert state_counts(study) == expected
    assert expected[TrialState.RUNNING] and expected[TrialState.WAITING]  # both present


def test_count_below_a_number_matches_optunas_trials(study: optuna.Study) -> None:
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    trials = study.get_trials()
    for number in range(len(trials) + 1):
        expected = sum(1 for t in trials if t.number < number and t.state in states)
        assert count_below(study, number, states) == expected


def test_other_storages_are_counted_through_optuna() -> None:
    study = optuna.create_study()  # in memory: no database to count in
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    assert state_counts(study)[TrialState.COMPLETE] == 3
    assert count_below(study, 2, [TrialState.COMPLETE]) == 2
