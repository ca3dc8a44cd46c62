"""A trial whose worker died before its first heartbeat is failed and retried, not kept."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'stale.db'}"
    return request.getfixturevalue("postgres_url")


def test_a_trial_that_never_beat_is_failed_after_the_grace_period(url: str) -> None:
    storage = open_storage(url, heartbeat_interval=1, grace_period=2, max_retry=3)
    study = optuna.create_study(study_name="stale", storage=storage, direction="maximize")
    # What a worker killed inside study.ask() leaves: RUNNING, no heartbeat, params set.
    dead = storage.create_new_trial(study._study_id)
    storage.set_trial_param(dead, "x", 0.5, optuna.distributions.FloatDistribution(0, 1))
    live = storage.create_new_trial(study._study_id)
    storage.record_heartbeat(live)

    optuna.storages.fail_stale_trials(study)
    assert storage.get_trial(dead).state == TrialState.RUNNING  # young: may still beat

    time.sleep(2.5)
    storage.record_heartbeat(live)
    optuna.storages.fail_stale_trials(study)
    assert storage.get_trial(dead).state == TrialState.FAIL
    assert storage.get_trial(live).state == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.params for t in waiting] == [{"x": 0.5}]  # retried with the same params
    assert waiting[0].system_attrs["failed_trial"] == storage.get_trial(dead).number
