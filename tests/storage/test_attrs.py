"""set_user_attrs on a real SQLite file and a real PostgreSQL: one commit, same result."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy as sa

from storage.attrs import set_user_attrs
from storage.rdb import open_storage

ATTRS = {"end_reason": "completed", "accuracy": 0.625, "curve": [0.5, 0.625], "shares": {"a": 1}}


def commits(storage: optuna.storages.RDBStorage) -> list[int]:
    """A counter of the engine's commits from now on."""
    seen: list[int] = []
    sa.event.listen(storage.engine, "commit", lambda _conn: seen.append(1))
    return seen


def check_round_trip(url: str) -> None:
    storage = open_storage(url, heartbeat_interval=None)
    study = optuna.create_study(study_name="attrs", storage=storage, direction="maximize")
    trial = study.ask()
    trial.set_user_attr("end_reason", "running")  # an existing key is overwritten
    counted = commits(storage)
    set_user_attrs(trial, ATTRS)
    assert len(counted) == 1
    assert trial.user_attrs == ATTRS  # the trial object sees them, as after set_user_attr
    study.tell(trial, 0.625)
    stored = optuna.load_study(study_name="attrs", storage=url).trials[0].user_attrs
    assert stored == ATTRS


def test_one_commit_for_all_keys_on_sqlite(tmp_path) -> None:
    check_round_trip(f"sqlite:///{tmp_path / 'attrs.db'}")


@pytest.mark.postgres
def test_one_commit_for_all_keys_on_postgresql(postgres_url) -> None:
    check_round_trip(postgres_url)


def test_a_finished_trial_is_refused_as_optuna_refuses_it(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'done.db'}", heartbeat_interval=None)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_user_attrs(trial, {"late": 1})
    assert "late" not in study.trials[0].user_attrs


def test_other_storages_get_one_call_per_key() -> None:
    study = optuna.create_study()  # in memory: no SQL to batch
    trial = study.ask()
    set_user_attrs(trial, ATTRS)
    study.tell(trial, 0.5)
    assert study.trials[0].user_attrs == ATTRS
