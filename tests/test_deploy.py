"""The deploy/ files: Kubernetes manifests valid against the API schemas (offline, strict),
the PgBouncer settings the same on Kubernetes and Slurm, and the Slurm scripts run for real
where they can (the pooler with the local pgbouncer, the workers with a stub focaltune)."""

from __future__ import annotations

import configparser
import contextlib
import copy
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import kubernetes_validate
import psycopg
import pytest
import sqlalchemy
import yaml

from tests.conftest import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
SLURM = ROOT / "deploy" / "slurm"
# A recent release bundled by kubernetes-validate (it bundles the latest dozen or so).
K8S_VERSION = "1.33.0"
PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
# What both poolers (the ConfigMap's ini and the one pooler.sbatch writes) must say.
POOLER_SETTINGS = {
    "pool_mode": "transaction",
    "default_pool_size": "20",
    "max_client_conn": "1000",
    "query_wait_timeout": "0",
    "auth_type": "scram-sha-256",
    "server_reset_query": "",
    "ignore_startup_parameters": "extra_float_digits",
}
# Quotes, URL delimiters, a percent sign and a non-ASCII letter.
PASSWORD = 'p"w @/:?#%é'


def documents() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc
    ]


def document(kind: str, name: str) -> dict:
    found = [
        doc for _, doc in documents() if (doc["kind"], doc["metadata"]["name"]) == (kind, name)
    ]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(comment_prefixes=(";", "#"), interpolation=None)
    parser.read_string(text)
    return parser


@pytest.mark.parametrize("doc", [d for _, d in documents()], ids=[i for i, _ in documents()])
def test_every_manifest_is_valid_in_strict_mode(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelled_field() -> None:
    doc = copy.deepcopy(document("Deployment", "pgbouncer"))
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readynessProbe"):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_workers_go_through_the_pooler_service() -> None:
    service = document("Service", "pgbouncer")
    assert [p["port"] for p in service["spec"]["ports"]] == [6432]
    pod = document("Deployment", "pgbouncer")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    config = ini(document("ConfigMap", "pgbouncer-config")["data"]["pgbouncer.ini"])
    assert config["pgbouncer"]["listen_port"] == "6432"
    assert {key: config["pgbouncer"].get(key) for key in POOLER_SETTINGS} == POOLER_SETTINGS

    def storage_key(job: str) -> str:
        (container,) = document("Job", job)["spec"]["template"]["spec"]["containers"]
        (env,) = [e for e in container["env"] if e["name"] == "FOCALTUNE_STORAGE"]
        return env["valueFrom"]["secretKeyRef"]["key"]

    assert storage_key("focaltune-workers") == "workers-url"
    assert storage_key("focaltune-create") == "url"


@pytest.mark.parametrize("script", sorted(p.name for p in SLURM.iterdir()))
def test_slurm_script_parses(script: str) -> None:
    subprocess.run(["bash", "-n", SLURM / script], check=True, timeout=10)


def test_pooler_script_writes_the_same_settings() -> None:
    script = (SLURM / "pooler.sbatch").read_text(encoding="utf-8")
    (heredoc,) = re.findall(r"<<EOF\n(.*?)^EOF$", script, re.S | re.M)
    config = ini(heredoc)["pgbouncer"]
    assert {key: config.get(key) for key in POOLER_SETTINGS} == POOLER_SETTINGS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_in(port: int, password: str, wait: float = 0.5) -> str:
    """Log in to the pooler on ``port``: libpq's error, or "pending" if none within ``wait`` s.

    With no PostgreSQL behind it, the pooler rejects a wrong password at once, and holds a
    client that passed SCRAM while it tries to reach the server (so: "pending").
    """
    conninfo = psycopg.conninfo.make_conninfo(
        host="127.0.0.1", port=port, dbname="focaltune", user="focaltune", password=password
    )
    pgconn = psycopg.pq.PGconn.connect_start(conninfo.encode())
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            polling = pgconn.connect_poll()
            if polling == psycopg.pq.PollingStatus.FAILED:
                return pgconn.error_message.decode(errors="replace")
            assert polling != psycopg.pq.PollingStatus.OK, "connected with no server behind"
            reading = polling == psycopg.pq.PollingStatus.READING
            sockets = [pgconn.socket]
            select.select(sockets if reading else [], [] if reading else sockets, [], 0.05)
        return "pending"
    finally:
        pgconn.finish()


def cmdlines(pgid: int) -> list[bytes]:
    """The command lines of the processes in process group ``pgid``."""
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) == pgid:
                lines.append((proc / "cmdline").read_bytes())
        except OSError:
            pass  # gone meanwhile
    return lines


@pytest.mark.skipif(PGBOUNCER is None, reason="pgbouncer not installed (apt install pgbouncer)")
def test_pooler_script_runs_pgbouncer_with_its_config() -> None:
    # pgbouncer refuses root: as root, run the script as the postgres user, in a folder it owns.
    as_root = os.geteuid() == 0
    if as_root:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run pgbouncer as")
    folder = Path(tempfile.mkdtemp(prefix="focaltune-pooler-"))
    try:
        script = folder / "pooler.sbatch"
        shutil.copy(SLURM / "pooler.sbatch", script)
        address = folder / "pooler-address"
        if as_root:
            for path in (folder, script):
                os.chown(path, user.pw_uid, user.pw_gid)
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TMPDIR": str(folder),
            "PGBOUNCER": str(PGBOUNCER),
            "PGHOST": "127.0.0.1",
            "PGPORT": str(free_port()),  # no server there: this checks the pooler alone
            "PGUSER": "focaltune",
            "PGPASSWORD": PASSWORD,
            "PGDATABASE": "focaltune",
            "POOLER_FILE": str(address),
            "POOLER_PORT": str(port),
            "POOLER_LISTEN": "127.0.0.1",
            "POOLER_HOST": "127.0.0.1",
        }
        # As `runuser -u postgres --` would, minus its 2 s pause when signalled.
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if as_root else {}
        proc = subprocess.Popen(
            ["bash", str(script)], env=env, cwd=folder, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **as_user,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 8
            while not address.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert address.read_text() == f"127.0.0.1:{port}\n"
            (private,) = folder.glob("pgbouncer.*")
            assert private.stat().st_mode & 0o777 == 0o700
            assert (private / "userlist.txt").stat().st_mode & 0o777 == 0o600
            written = ini((private / "pgbouncer.ini").read_text())["pgbouncer"]
            assert {key: written.get(key) for key in POOLER_SETTINGS} == POOLER_SETTINGS
            assert not any(PASSWORD.encode() in line for line in cmdlines(proc.pid))

            assert "SASL authentication failed" in log_in(port, "wrong", wait=5)
            # The right one passes SCRAM; pgbouncer then waits for a server that is not there.
            assert log_in(port, PASSWORD) == "pending"
        finally:
            with contextlib.suppress(ProcessLookupError):  # (it may have failed by itself)
                os.killpg(proc.pid, signal.SIGTERM)  # what Slurm's scancel does
            output = proc.communicate(timeout=10)[0].decode(errors="replace")
            print(output)  # shown by pytest if the test fails
        assert PASSWORD not in output
        assert not address.exists()  # the pooler takes its address away when it stops
        assert not list(folder.glob("pgbouncer.*"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_worker(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run workers.sbatch with a stub `focaltune` that records its arguments and storage URL."""
    stub = tmp_path / "bin" / "focaltune"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$*" "$FOCALTUNE_STORAGE" >"$RECORD"\n')
    stub.chmod(0o755)
    base = {"PATH": f"{stub.parent}:/usr/bin:/bin", "RECORD": str(tmp_path / "record")}
    return subprocess.run(
        ["bash", SLURM / "workers.sbatch"], env=base | env, capture_output=True, text=True,
        timeout=10,
    )  # fmt: skip


def test_worker_builds_its_storage_url_from_the_pooler_address(tmp_path: Path) -> None:
    address = tmp_path / "pooler-address"
    address.write_text("node7:6432\n")
    credentials = {"PGUSER": "focal tune", "PGPASSWORD": PASSWORD, "PGDATABASE": "focaltune"}
    env = {"STUDY": "demo", "SLURM_ARRAY_TASK_ID": "3", "POOLER_FILE": str(address)}
    done = run_worker(tmp_path, **env, **credentials)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    arguments, storage = (tmp_path / "record").read_text().splitlines()
    assert arguments == "worker --study demo --worker-index 3"
    url = sqlalchemy.engine.make_url(storage)
    assert (url.drivername, url.host, url.port) == ("postgresql+psycopg", "node7", 6432)
    assert (url.username, url.password, url.database) == ("focal tune", PASSWORD, "focaltune")


def test_worker_without_a_pooler_address_gives_up(tmp_path: Path) -> None:
    env = {"STUDY": "demo", "POOLER_FILE": str(tmp_path / "absent"), "POOLER_WAIT": "1"}
    done = run_worker(tmp_path, **env, PGUSER="u", PGPASSWORD=PASSWORD, PGDATABASE="d")
    assert done.returncode == 1
    assert "no pooler address" in done.stderr and PASSWORD not in done.stderr
    assert not (tmp_path / "record").exists()
