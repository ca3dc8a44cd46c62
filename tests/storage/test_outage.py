"""A real PostgreSQL server stopped under a storage: calls wait for it, then go on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import sqlalchemy.exc

from storage import open_storage
from storage.errors import BadStorage, StorageUnreachable
from storage.outage import is_connection_error, wait_for_storage
from tools.postgres import LocalPostgres


@pytest.fixture
def server(tmp_path: Path):
    with LocalPostgres(tmp_path / "pg") as pg:
        yield pg


@pytest.mark.postgres
def test_connection_errors_are_told_from_query_errors(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    with pytest.raises(sqlalchemy.exc.ProgrammingError) as bad_query, engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
    assert not is_connection_error(bad_query.value)
    closed = sqlalchemy.make_url(postgres_url).set(port=1)  # nothing listens on port 1
    with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
        sqlalchemy.create_engine(closed).connect()
    assert is_connection_error(refused.value)
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = refused.value  # how Optuna's RDBStorage reports a dropped connection
    assert is_connection_error(wrapped)


@pytest.mark.postgres
def test_a_read_waits_for_a_restarted_server(server: LocalPostgres) -> None:
    storage = open_storage(server.create_database("wait"), heartbeat_interval=None)
    study = optuna.create_study(study_name="s", storage=storage)
    study.add_trial(optuna.trial.create_trial(value=1.0))
    server.stop()
    restart = threading.Timer(3.0, server.start)
    restart.start()
    started = time.monotonic()
    trials = storage.get_all_trials(study._study_id)  # blocks until the server is back
    waited = time.monotonic() - started
    restart.join()
    assert [t.value for t in trials] == [1.0]
    assert waited >= 2.5, f"returned after {waited:.1f} s, before the server came back"


@pytest.mark.postgres
def test_an_outage_longer_than_the_limit_is_an_error(server: LocalPostgres) -> None:
    storage = open_storage(
        server.create_database("gone"), heartbeat_interval=None, outage_seconds=2
    )
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    server.stop()
    started = time.monotonic()
    with pytest.raises(StorageUnreachable, match="unreachable for more than 2 s"):
        storage.get_all_trials(study_id)
    assert time.monotonic() - started < 10
    with pytest.raises(optuna.exceptions.StorageInternalError):
        storage.create_new_trial(study_id)  # not repeatable: fails at once, no wait


@pytest.mark.postgres
def test_a_missed_heartbeat_does_not_end_the_heartbeats(server: LocalPostgres) -> None:
    storage = open_storage(server.create_database("beat"), heartbeat_interval=1, grace_period=5)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    trial_id = storage.create_new_trial(study_id)
    server.stop()
    storage.record_heartbeat(trial_id)  # logged, not raised: Optuna's thread would die
    server.start()
    storage.record_heartbeat(trial_id)
    assert storage.stale_trial_ids(study_id) == []


def test_wait_for_storage_does_not_hide_other_errors() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise optuna.exceptions.StorageInternalError("value too long")

    with pytest.raises(optuna.exceptions.StorageInternalError, match="too long"):
        wait_for_storage(broken, outage_seconds=30)
    assert calls == [1]  # not retried


def test_sqlite_storages_do_not_wait(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=None)
    assert storage.outage_seconds == 0  # a lock wait is SQLite's busy timeout's job


@pytest.mark.postgres
def test_the_outage_limit_comes_from_the_environment(
    server: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.create_database("limit")
    monkeypatch.setenv("FOCALTUNE_OUTAGE_SECONDS", "7.5")
    assert open_storage(url, heartbeat_interval=None).outage_seconds == 7.5
    monkeypatch.setenv("FOCALTUNE_OUTAGE_SECONDS", "soon")
    with pytest.raises(BadStorage, match="FOCALTUNE_OUTAGE_SECONDS='soon' is not a number"):
        open_storage(url, heartbeat_interval=None)
