"""Exposure: a real PostgreSQL password never leaves the storage URL, and bundles never
unpickle anything.

The password is hunted in everything a study's life writes: command output and logs,
`status`, the exported YAML, W&B runs, artifacts, every row of the database (configs,
notes, attributes), error messages with and without `--debug`, `--help`, and the command
lines of the worker processes that `launch` starts.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy
import yaml

from storage import open_storage
from tests.reliability.conftest import assert_refused, cli, free_port
from tests.search.conftest import ROOT
from trainer.final.bundle import MANIFEST, write_manifest

pytestmark = pytest.mark.process  # every test runs the CLI or another process

COMMANDS = ("study", "worker", "launch", "status", "export", "dashboard", "predict", "final")


def scan_command_lines(secret: str, stop: threading.Event, found: list[str]) -> None:
    """Record every process whose command line holds ``secret`` (what `ps` shows anyone)."""
    while not stop.is_set():
        for entry in Path("/proc").iterdir():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # not a process, or it has just exited
            if secret in line:
                found.append(line)
        time.sleep(0.2)


def database_text(url: str) -> str:
    """Every row of every table of the study's database, as text."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            tables = sqlalchemy.inspect(connection).get_table_names()
            rows = [
                repr(row)
                for table in tables
                for row in connection.execute(sqlalchemy.text(f'SELECT * FROM "{table}"'))
            ]
    finally:
        engine.dispose()
    return "\n".join(rows)


def files_text(folder: Path) -> tuple[bytes, int]:
    """The bytes of every file under ``folder`` (binary W&B runs and PNGs too) and the count."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return b"\n".join(p.read_bytes() for p in files), len(files)


def launch_watched(config: Path, env: dict[str, str], secret: str) -> tuple[str, list[str]]:
    """`focaltune -v launch` (URL from the environment) while process lists are scanned."""
    stop, exposed = threading.Event(), []
    scanner = threading.Thread(target=scan_command_lines, args=(secret, stop, exposed))
    scanner.start()
    try:
        result = cli("-v", "launch", str(config), "--workers", "2", "--verbose", env=env)
    finally:
        stop.set()
        scanner.join()
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr, exposed


@pytest.mark.slow
@pytest.mark.postgres
def test_the_password_never_leaves_the_storage_url(postgres, write_config, tmp_path: Path) -> None:
    url, secret = postgres.create_database("secrets"), postgres.password
    env = {"FOCALTUNE_STORAGE": url}
    config = write_config("sec", study={"n_trials": 2})
    raw = yaml.safe_load(config.read_text())
    raw["tracking"] = {
        "artifacts": str(tmp_path / "artifacts"),
        "wandb": {"enabled": True, "mode": "offline", "dir": str(tmp_path / "wandb")},
    }
    config.write_text(yaml.safe_dump(raw))

    outputs = [cli("study", "create", str(config), env=env)]  # the URL from the environment
    assert outputs[0].returncode == 0, outputs[0].stderr
    logs, exposed = launch_watched(config, env, secret)
    assert not exposed, f"password on a command line: {exposed[0][:200]}"
    final = tmp_path / "final.yaml"
    outputs += [
        cli("status", "--study", "sec", env=env),
        cli("status", "--study", "sec", "--json", env=env),
        cli("export", "--study", "sec", "--out", str(final), env=env),
    ]
    assert all(r.returncode == 0 for r in outputs), [r.stderr for r in outputs]
    assert json.loads(outputs[2].stdout)["finished"] == 2
    refused = [
        cli("worker", "--storage", url, "--study", "nope"),
        cli("--debug", "status", "--storage", url.replace("/secrets", "/gone"), "--study", "x"),
        cli("status", "--storage", url.replace("127.0.0.1", "127.0.0.2"), "--study", "x"),
    ]
    assert all(r.returncode != 0 for r in refused)
    assert "Traceback" in refused[1].stderr  # --debug: the whole chain is shown, still masked
    helps = [cli(*(c.split() + ["--help"]), env=env) for c in ("", *COMMANDS)]

    written, n_files = files_text(tmp_path)
    text = "\n".join(r.stdout + r.stderr for r in outputs + refused + helps) + logs
    assert "***" in refused[0].stderr + refused[2].stderr  # the URL is shown, masked
    assert n_files >= 6 and final.exists()  # artifacts, W&B runs, the export: all scanned
    assert secret not in text, "password in command output"
    assert secret.encode() not in written, "password in a file written by the study"
    rows = database_text(url)
    assert "focaltune:config" in rows and "COMPLETE" in rows  # configs, notes, trials scanned
    assert secret not in rows, "password stored in the database"


def test_predict_refuses_pickled_weights_even_with_a_consistent_manifest(
    bundle_template: Path, tmp_path: Path, nsmc_csv
) -> None:
    """A member whose weights are a pickle (here a payload that would create a folder when
    unpickled), listed with correct hashes: `predict` must refuse it without loading it."""
    for path in bundle_template.rglob("*"):
        assert path.suffix not in (".bin", ".pt", ".pkl", ".pth"), f"pickle in bundle: {path}"
    root = shutil.copytree(bundle_template, tmp_path / "bundle")
    marker = tmp_path / "unpickled"
    member = root / "members" / "member-1"
    (member / "model.safetensors").unlink()
    (member / "pytorch_model.bin").write_bytes(pickle.dumps(MakeFolder(str(marker))))
    manifest = json.loads((root / MANIFEST).read_text())
    body = {k: v for k, v in manifest.items() if k not in ("format", "files", "sha256")}
    write_manifest(root, body)  # an attacker who also rewrites the hashes

    out = tmp_path / "out.csv"
    result = cli("predict", str(root), "--input", str(nsmc_csv(20)), "--output", str(out))
    assert_refused(result, "member-1", "cannot be loaded")
    assert not marker.exists(), "the pickle was loaded"
    assert not out.exists()


class MakeFolder:
    """Unpickling this calls os.mkdir(path): proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.path,))


def test_storage_url_from_the_environment_is_used(write_config, tmp_path: Path) -> None:
    """FOCALTUNE_STORAGE alone (no --storage, nothing in the config) selects the database."""
    url = f"sqlite:///{tmp_path / 'env.db'}"
    default_db_existed = (ROOT / "focaltune.db").exists()
    result = cli("study", "create", str(write_config("envs")), env={"FOCALTUNE_STORAGE": url})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "env.db").exists()
    assert (ROOT / "focaltune.db").exists() == default_db_existed  # the default was not used
    status = cli("status", "--study", "envs", "--json", env={"FOCALTUNE_STORAGE": url})
    assert json.loads(status.stdout)["study"] == "envs"
    storage = open_storage(url, heartbeat_interval=None)
    assert [s.study_name for s in storage.get_all_studies()] == ["envs"]


def test_the_command_line_scan_finds_a_secret() -> None:
    """The launch check above can fail: a process showing a secret in its arguments is seen."""
    secret = "Zebra-9-in-argv"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)", secret])
    stop, found = threading.Event(), []
    scanner = threading.Thread(target=scan_command_lines, args=(secret, stop, found))
    scanner.start()
    time.sleep(1)
    stop.set()
    scanner.join()
    proc.kill()
    proc.wait()
    assert found and secret in found[0]


SECRET = "Hunter2-never-shown"
# Passwords the old pattern masking showed (whitespace, a raw "@", a query parameter).
PASSWORDS = {
    "space": f"Sp ace {SECRET}",
    "tab": f"Tab\t{SECRET}",
    "raw-at": f"{SECRET}@rest-of-{SECRET}",
    "encoded": f"{SECRET}%40x%20y",
}


def bad_urls(port: int) -> list[str]:
    urls = [f"postgresql+psycopg://u:{pw}@127.0.0.1:{port}/db" for pw in PASSWORDS.values()]
    urls.append(f"postgresql+psycopg://u@127.0.0.1:{port}/db?sslmode=disable&password={SECRET}")
    return urls


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("index", range(5), ids=[*PASSWORDS, "query"])
def test_no_password_in_any_error_output(index: int, debug: bool) -> None:
    """Every failing command, with and without --debug, flag and environment: the password
    and every piece of it are nowhere in stdout or stderr."""
    url = bad_urls(free_port())[index]
    mode = ["--debug"] if debug else []
    results = [
        cli(*mode, "status", "--storage", url, "--study", "s"),
        cli(*mode, "status", "--study", "s", env={"FOCALTUNE_STORAGE": url}),
        cli(*mode, "status", "--storage", url, "--study", "s", "--colour"),  # a bad flag
    ]
    for result in results:
        assert result.returncode in (1, 2)
        text = result.stdout + result.stderr
        for piece in (SECRET, "Sp ace", "rest-of", "Tab\t"):
            assert piece not in text, text[-2000:]
        assert ("Traceback" in result.stderr) == (debug and result is not results[2])
    if index < 4:
        assert "***" in results[0].stderr  # the URL is shown, masked
