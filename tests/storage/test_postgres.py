"""LocalPostgres: a real server, password auth on loopback, restarts, and the up/down CLI."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg
import pytest
import sqlalchemy as sa

from storage.rdb import open_storage
from tools.postgres import LocalPostgres, LocalPostgresError

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server_root() -> Iterator[Path]:
    """A folder the `postgres` user can enter (pytest's tmp_path is 0700 when we are root)."""
    folder = Path(tempfile.mkdtemp(prefix="focaltune-pg-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def connect(url: str, **overrides: object) -> psycopg.Connection:
    parts = sa.engine.make_url(url)
    options = {
        "host": parts.host,
        "port": parts.port,
        "user": parts.username,
        "password": parts.password,
        "dbname": parts.database,
        "connect_timeout": 5,
    }
    return psycopg.connect(**{**options, **overrides})


def run_cli(action: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tools.postgres", action]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_server_accepts_the_password_on_loopback_only(postgres: LocalPostgres) -> None:
    with connect(postgres.url()) as connection:
        assert connection.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert connection.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(postgres.url(), password="not-the-password")


def test_create_database_returns_a_fresh_empty_database(postgres: LocalPostgres) -> None:
    url = postgres.create_database("fresh_db")
    assert url == postgres.url("fresh_db") and url.startswith("postgresql+psycopg://focaltune:")
    with connect(url) as connection:
        connection.execute("CREATE TABLE leftover (x integer)")
    postgres.create_database("fresh_db")
    with connect(url) as connection:
        query = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        assert connection.execute(query).fetchone() == (0,)


def test_bad_database_names_are_refused(postgres: LocalPostgres) -> None:
    with pytest.raises(ValueError, match="database name"):
        postgres.create_database('x"; DROP DATABASE focaltune; --')


def test_restart_keeps_port_and_data_and_storage_reconnects(server_root: Path) -> None:
    with LocalPostgres(server_root / "pg") as server:
        port = server.port
        storage = open_storage(server.create_database("kept"))
        study = optuna.create_study(storage=storage, study_name="kept")
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
        server.restart()
        assert server.port == port and server.running()
        # The pool's connections died with the old server; pool_pre_ping replaces them.
        reloaded = optuna.load_study(study_name="kept", storage=storage)
        assert [t.params for t in reloaded.trials] == [t.params for t in study.trials]
    assert not server.running()


def test_a_busy_port_fails_with_the_server_log(server_root: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = LocalPostgres(server_root / "pg", port=squatter.getsockname()[1])
        with pytest.raises(LocalPostgresError, match="did not start") as caught:
            server.start()
    assert "could not bind" in str(caught.value) or "already in use" in str(caught.value)


def test_url_before_start_is_an_error(server_root: Path) -> None:
    with pytest.raises(LocalPostgresError, match="not been started"):
        LocalPostgres(server_root / "never").url()


@pytest.mark.process
def test_cli_up_is_idempotent_and_down_stops(server_root: Path) -> None:
    first = run_cli("up", server_root)
    try:
        assert first.returncode == 0, first.stderr
        url = first.stdout.strip()
        assert (server_root / ".focaltune-pg" / "url").read_text().strip() == url
        second = run_cli("up", server_root)
        assert second.returncode == 0 and second.stdout.strip() == url
        with connect(url) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == ("focaltune",)
    finally:
        down = run_cli("down", server_root)
    assert down.returncode == 0, down.stderr
    with pytest.raises(psycopg.OperationalError):
        connect(url)
    again = run_cli("down", server_root)
    assert again.returncode == 0 and "no PostgreSQL server running" in again.stderr
