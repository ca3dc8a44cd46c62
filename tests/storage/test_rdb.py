"""open_storage on real SQLite files and a real PostgreSQL: engine settings, errors, heartbeats."""

from __future__ import annotations

import os
import pickle
import pwd
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from storage.errors import BadStorage
from storage.rdb import (
    SQLITE_BUSY_TIMEOUT_S,
    open_storage,
    set_heartbeat,
    warn_if_sqlite_crowded,
)
from storage.stale import fail_stale_trials

ROOT = Path(__file__).resolve().parents[2]

# A worker that starts one trial and hangs in it, so the test can kill it mid-trial.
HANGING_WORKER = """
import sys, time, optuna
from storage.rdb import open_storage
storage = open_storage(sys.argv[1], heartbeat_interval=1, grace_period=3)
study = optuna.load_study(study_name="hb", storage=storage)
def objective(trial):
    trial.suggest_float("x", 0.0, 1.0)
    print("running", flush=True)
    time.sleep(600)
study.optimize(objective, n_trials=1)
"""
HOLD_LOCK = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(5.5)
connection.execute("ROLLBACK")
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temporary folder that an unprivileged user can enter (pytest's tmp_path is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="focaltune-test-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def open_unprivileged(url: str) -> str:
    """open_storage(url) in a forked child that drops root first: root ignores permissions.

    A fork, not a new interpreter: this Python may live where `nobody` cannot enter (/root).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if os.geteuid() == 0:
                nobody = pwd.getpwnam("nobody")
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            open_storage(url)
            outcome = "opened"
        except BaseException as err:
            outcome = f"{type(err).__name__}: {err}"
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        outcome = pipe.read()
    os.waitpid(pid, 0)
    return outcome


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sqlite_file_is_wal_and_every_new_connection_waits_when_busy(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "study.db"
    storage = open_storage(f"sqlite:///{path}")
    optuna.create_study(storage=storage, study_name="s")
    # WAL is a property of the file: a plain sqlite3 connection sees it too.
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    storage.engine.dispose()
    # Optuna pickles storages for worker processes; the rebuilt engine must keep the timeout.
    engines = [storage.engine, pickle.loads(pickle.dumps(storage)).engine]
    for engine in engines:
        with engine.connect() as first, engine.connect() as second:
            for connection in (first, second):
                busy_ms = connection.execute(sa.text("PRAGMA busy_timeout")).scalar()
                assert busy_ms == SQLITE_BUSY_TIMEOUT_S * 1000


@pytest.mark.process
def test_sqlite_writer_waits_for_a_held_lock_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    storage = open_storage(f"sqlite:///{path}")
    # Another process holds the write lock longer than sqlite3's default 5 s timeout.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    started = time.monotonic()
    optuna.create_study(storage=storage, study_name="after-the-lock")
    assert time.monotonic() - started > 4.5
    assert holder.wait() == 0


@pytest.mark.parametrize("layout", ["read-only folder", "read-only file", "folder under file"])
def test_unwritable_sqlite_location_is_bad_storage(shared_dir: Path, layout: str) -> None:
    if layout == "read-only folder":
        (shared_dir / "ro").mkdir(mode=0o555)
        target = shared_dir / "ro" / "study.db"
    elif layout == "read-only file":
        target = shared_dir / "study.db"
        sqlite3.connect(target).execute("CREATE TABLE t (x)").connection.commit()
        target.chmod(0o444)
        shared_dir.chmod(0o555)
    else:
        (shared_dir / "plain").write_text("not a folder")
        target = shared_dir / "plain" / "study.db"
    outcome = open_unprivileged(f"sqlite:///{target}")
    assert outcome.startswith("BadStorage: ") and str(target) in outcome and "writable" in outcome


def test_unreachable_server_is_bad_storage_without_password() -> None:
    url = f"postgresql://alice:s3cret@127.0.0.1:{closed_port()}/studies"
    with pytest.raises(BadStorage) as caught:
        open_storage(url)
    message = str(caught.value)
    assert "alice:***@127.0.0.1" in message and "make db-up" in message
    assert "s3cret" not in message and "\n" not in message


def test_heartbeat_settings_must_leave_room_for_a_live_trial() -> None:
    with pytest.raises(ValueError, match="grace_period=5"):
        open_storage("sqlite:///:memory:", heartbeat_interval=10, grace_period=5)


def test_crowded_sqlite_warns_and_suggests_postgres(caplog: pytest.LogCaptureFixture) -> None:
    assert warn_if_sqlite_crowded("sqlite:///a.db", n_workers=4) is None
    assert warn_if_sqlite_crowded("postgresql://u@h/db", n_workers=32) is None
    message = warn_if_sqlite_crowded("sqlite:///a.db", n_workers=5)
    assert message is not None and "5 workers" in message and "PostgreSQL" in message
    assert message in caplog.text


@pytest.mark.postgres
def test_wrong_password_is_bad_storage_without_password(postgres_url: str) -> None:
    url = sa.engine.make_url(postgres_url).set(password="wr0ng-pw")
    with pytest.raises(BadStorage) as caught:
        open_storage(url.render_as_string(hide_password=False))
    message = str(caught.value)
    assert "password" in message and "focaltune:***@127.0.0.1" in message
    assert "wr0ng-pw" not in message


@pytest.mark.postgres
def test_unknown_database_is_bad_storage_with_a_hint(postgres_url: str) -> None:
    url = sa.engine.make_url(postgres_url).set(database="no_such_db")
    with pytest.raises(BadStorage, match="no_such_db.*createdb"):
        open_storage(url.render_as_string(hide_password=False))


def test_heartbeats_can_be_given_to_an_open_storage() -> None:
    # A worker reads the study's heartbeat settings through the storage it then runs on.
    storage = open_storage("sqlite:///:memory:", heartbeat_interval=None)
    assert storage.get_heartbeat_interval() is None
    set_heartbeat(storage, 2, 6, max_retry=1)
    assert storage.get_heartbeat_interval() == 2 and storage.grace_period == 6
    assert storage.get_heartbeat_stale_trial_callback()._max_retry == 1
    with pytest.raises(ValueError, match="grace_period=6"):
        set_heartbeat(storage, 6, 6, max_retry=1)


@pytest.mark.postgres
def test_postgres_storage_uses_a_small_pool(postgres_url: str) -> None:
    storage = open_storage(postgres_url, pool_size=2)
    # Both connections are open from the start: a full server refuses the worker now,
    # not its heartbeat thread in the middle of a trial.
    assert storage.engine.pool.checkedin() == 2
    study = optuna.create_study(storage=storage, study_name="pool")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    assert len(study.trials) == 3
    assert storage.engine.pool.size() == 2


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hb.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.process
def test_killed_workers_trial_fails_and_is_retried_by_the_next_worker(any_url: str) -> None:
    storage = open_storage(any_url, heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(storage=storage, study_name="hb", direction="maximize")
    worker = subprocess.Popen(
        [sys.executable, "-c", HANGING_WORKER, any_url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None and worker.stdout.readline() == "running\n"
    time.sleep(1.5)  # let the heartbeat thread record at least once
    worker.kill()
    worker.wait()
    fail_stale_trials(study)  # the worker loop's repair
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING  # within the grace period
    deadline = time.monotonic() + 20
    while study.trials[0].state == optuna.trial.TrialState.RUNNING:
        assert time.monotonic() < deadline, "the stale trial was never failed"
        time.sleep(0.5)
        fail_stale_trials(study)
    original, retry = study.trials
    assert original.state == optuna.trial.TrialState.FAIL
    assert retry.state == optuna.trial.TrialState.WAITING
    assert retry.system_attrs["failed_trial"] == original.number
    # The next worker picks up the WAITING copy with the same parameters.
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=1)
    assert study.trials[1].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[1].params == original.params
