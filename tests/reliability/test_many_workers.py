"""Many workers against one PostgreSQL with few connections: through PgBouncer, and refused
directly with one line. Real servers (PostgreSQL with a small ``max_connections``, PgBouncer
in transaction mode), real worker processes running the real worker loop with the synthetic
objective of ``make scale`` (the training path is tested elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import psycopg
import pytest

from benchmarks import scale
from tools.pgbouncer import LocalPgBouncer
from tools.postgres import LocalPostgres

pytestmark = [pytest.mark.postgres, pytest.mark.process]

ROOT = Path(__file__).resolve().parents[2]
MAX_CONNECTIONS = 12


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory):
    settings = {"max_connections": str(MAX_CONNECTIONS)}
    with LocalPostgres(tmp_path_factory.mktemp("pg"), settings=settings) as server:
        yield server


def test_sixteen_workers_share_six_server_connections_and_a_kill_is_retried(small_server):
    args = scale.parse_args(
        ["--low", "0.5", "--high", "1.5", "--trials-per-worker", "3", "--kill-fraction", "0.2"]
        + ["--heartbeat", "1", "--grace", "4", "--minutes", "5"]
    )
    run = scale.run_once(small_server, "pgbouncer", 16, True, args, pool_size=6)
    # 16 workers x 2 connections = 32 clients, three times what the server takes.
    assert run.refused == 0 and run.errors == []
    assert run.server_connections_max <= 6  # PgBouncer's pool (the watcher's own excluded)
    assert run.budget_exact, (run.complete, run.pruned, run.budget)
    assert run.running_at_end == 0
    assert run.kills == 3
    # Each was killed inside its objective; only one finishing in the moment between the
    # check and the kill would leave no killed trial.
    assert run.killed_trials >= 1
    assert run.killed_retried_once == run.killed_trials


def test_a_worker_past_the_connection_limit_exits_2_with_one_line(small_server):
    url = small_server.url()
    scale.create(url, "refused", budget=4, heartbeat=1, grace=4)
    # Take every slot but one: the worker's first connection (reading the study's config)
    # gets in, its second does not. It must fail before it creates a trial.
    held = fill(small_server.url("postgres").replace("+psycopg", ""))
    held.pop().close()
    try:
        command = [sys.executable, "-m", "benchmarks.scale_worker", "--study", "refused"]
        env = dict(os.environ, FOCALTUNE_STORAGE=url)
        done = subprocess.run(
            [*command, "--log", os.devnull],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        for connection in held:
            connection.close()
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "max_connections" in lines[0] and "PgBouncer" in lines[0]
    assert small_server.password not in done.stderr
    study = optuna.load_study(study_name="refused", storage=url)
    assert study.get_trials() == []  # nothing RUNNING: not even created


def test_a_worker_opens_through_a_pool_of_one_server_connection(small_server):
    # Optuna's own schema check holds a transaction while it reads the revision on a second
    # connection: behind PgBouncer that needs 2 server connections at once, and workers that
    # start together deadlock once they outnumber the pool. A pool of one shows it alone.
    scale.create(small_server.url(), "one", budget=1, heartbeat=1, grace=4)  # schema, direct
    with LocalPgBouncer(small_server, pool_size=1) as pooler:
        opened = subprocess.run(
            [sys.executable, "-c", "import os; from storage import open_storage; "
             "open_storage(os.environ['FOCALTUNE_STORAGE']); print('opened')"],
            env=dict(os.environ, FOCALTUNE_STORAGE=pooler.url()),  # no password in `ps`
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert opened.stdout.strip() == "opened", opened.stderr


def fill(url: str) -> list[psycopg.Connection]:
    """Connections to the server until it refuses one (backends of closed connections may
    still be exiting, so counting the free slots would not be exact)."""
    held = []
    while True:
        try:
            held.append(psycopg.connect(url, connect_timeout=10))
        except psycopg.OperationalError as err:
            assert "too many clients" in str(err), err
            return held
