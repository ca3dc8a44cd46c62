"""A real, local PostgreSQL server for development and tests.

``python -m tools.postgres up`` (``make db-up``) starts one with its state in
``./.focaltune-pg/`` and prints its storage URL, and starts PgBouncer in front of it when it
is installed (its URL, for many workers, in ``./.focaltune-pg/pooled-url``); ``... down``
(``make db-down``) stops both.
It listens on 127.0.0.1 only, with password (scram-sha-256) login for the superuser
``focaltune``. PostgreSQL refuses to run as root, so then it runs as the ``postgres`` user.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

SUPERUSER = "focaltune"
SERVER_USER = "postgres"  # the OS user that runs the server when we are root
STATE_DIR = ".focaltune-pg"


class LocalPostgresError(RuntimeError):
    """The local server could not be set up, started or stopped."""


class LocalPostgres:
    """A PostgreSQL server whose state (data, log, password, port) lives under ``root``.

    ``port=None`` reuses the last port when it is free, else picks a free one; ``password``
    is the superuser's for a new cluster (default: generated and kept in ``root``);
    ``settings`` are server settings for this start, e.g. ``{"max_connections": "50"}``.
    """

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        password: str | None = None,
        settings: dict[str, str] | None = None,
    ):
        self.root = Path(root).absolute()
        self.settings = dict(settings or {})
        state = self._read_state()
        stored = state.get("password")
        if password is not None and stored is not None and password != stored:
            raise ValueError(f"{self.root} already holds a cluster with another password")
        self.password: str = password or stored or secrets.token_urlsafe(24)
        stored_port = state.get("port")
        self.port = port or (free_port(stored_port) if isinstance(stored_port, int) else None)
        self._as_root = os.geteuid() == 0

    def start(self) -> LocalPostgres:
        """Start the server (creating the cluster first if needed); wait until it accepts."""
        if self.running():
            self.port = self._running_port()
        else:
            home = self._prepare_home()
            if not (home / "data" / "PG_VERSION").exists():
                self._initdb(home)
            self.port = self.port or free_port()
            self._start_server(home)
        self._ensure_database(SUPERUSER)
        self._write_state()
        return self

    def stop(self) -> None:
        """Stop the server if it runs (fast shutdown: open sessions are rolled back)."""
        if self.running():
            self._pg("pg_ctl", "stop", "-D", self._home() / "data", "-m", "fast", "-w", "-t", "60")

    def restart(self) -> None:
        """Stop, then start again on the same port with the same data."""
        self.stop()
        self.start()

    def running(self) -> bool:
        """Whether this root's server is running."""
        data = self._home() / "data"
        if not (data / "postmaster.pid").exists():
            return False
        return self._pg("pg_ctl", "status", "-D", data, check=False).returncode == 0

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop; also delete the private folder outside ``root`` if one was needed."""
        self.stop()
        link = self.root / "server"
        if link.is_symlink():  # see _prepare_home
            shutil.rmtree(link.resolve(), ignore_errors=True)
            link.unlink()

    def url(self, database: str = SUPERUSER) -> str:
        """SQLAlchemy URL of ``database`` on this server, with the password."""
        if self.port is None:
            raise LocalPostgresError(f"the server in {self.root} has not been started")
        url = URL.create(
            "postgresql+psycopg", SUPERUSER, self.password, "127.0.0.1", self.port, database
        )
        return url.render_as_string(hide_password=False)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (dropping any old one) and return its URL."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: use up to 63 letters, digits and _")
        with self._connect() as connection:
            identifier = sql.Identifier(name)
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier)
            )
            connection.execute(sql.SQL("CREATE DATABASE {}").format(identifier))
        return self.url(name)

    def _ensure_database(self, name: str) -> None:
        with self._connect() as connection, suppress(psycopg.errors.DuplicateDatabase):
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        )

    def _home(self) -> Path:
        return (self.root / "server").resolve()

    def _prepare_home(self) -> Path:
        """The folder for data, socket and log, owned by the user that runs the server."""
        link = self.root / "server"
        if link.is_symlink() and not link.exists():
            link.unlink()  # its private folder was removed (reboot cleaned /tmp)
        if link.exists():
            return link.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        link.mkdir(mode=0o700)
        if not self._as_root:
            return link
        chown_to_server_user(link)
        if self._run(["test", "-w", str(link)], check=False).returncode == 0:
            return link
        # A parent folder the server user cannot enter (pytest's private tmp folders are 0700):
        # use a private folder under /tmp instead and leave a link to it in root.
        link.rmdir()
        home = Path(tempfile.mkdtemp(prefix="focaltune-pg-"))
        chown_to_server_user(home)
        link.symlink_to(home, target_is_directory=True)
        return home

    def _initdb(self, home: Path) -> None:
        pwfile = home / "pwfile"
        write_private(pwfile, self.password + "\n")
        if self._as_root:
            chown_to_server_user(pwfile)
        auth = ["--auth", "scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"]
        try:
            self._pg("initdb", "-D", home / "data", "-U", SUPERUSER, "--pwfile", pwfile, *auth)
        finally:
            pwfile.unlink(missing_ok=True)

    def _start_server(self, home: Path) -> None:
        sockets = home / "run"
        sockets.mkdir(exist_ok=True)
        if self._as_root:
            chown_to_server_user(sockets)
        # Unix socket paths are limited to ~107 bytes; TCP alone is enough for us.
        socket_dir = str(sockets) if len(str(sockets)) < 80 else ""
        options = f"-p {self.port} -k {shlex.quote(socket_dir)} -c listen_addresses=127.0.0.1"
        for key, value in self.settings.items():
            options += f" -c {key}={shlex.quote(str(value))}"
        log = home / "server.log"
        start = ["start", "-D", home / "data", "-l", log, "-w", "-t", "60", "-o", options]
        if self._pg("pg_ctl", *start, check=False).returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            raise LocalPostgresError(
                f"PostgreSQL did not start on 127.0.0.1:{self.port}; the end of {log}:\n"
                + "\n".join(tail)
            )

    def _running_port(self) -> int:
        # postmaster.pid: pid, data dir, start time, port, ... (one per line)
        return int((self._home() / "data" / "postmaster.pid").read_text().splitlines()[3])

    def _pg(self, program: str, *args: object, check: bool = True) -> subprocess.CompletedProcess:
        return self._run([_binary(program), *map(str, args)], check=check)

    def _run(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``command``, as the server user when we are root."""
        if self._as_root:
            command = as_server_user(command)
        # cwd="/": the server user may not be allowed into our working folder.
        result = subprocess.run(command, capture_output=True, text=True, cwd="/", check=False)
        if check and result.returncode != 0:
            output = (result.stderr.strip() or result.stdout.strip()).replace("\n", " | ")
            raise LocalPostgresError(f"{shlex.join(command)} failed: {output}")
        return result

    def _read_state(self) -> dict[str, Any]:
        path = self.root / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _write_state(self) -> None:
        write_private(
            self.root / "state.json", json.dumps({"port": self.port, "password": self.password})
        )
        write_private(self.root / "url", self.url() + "\n")


def write_private(path: Path, text: str) -> None:
    # Created 0600: the file holds the superuser's password.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def _binary(program: str) -> str:
    if found := shutil.which(program):
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{program}"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if not candidates:
        raise LocalPostgresError(
            f"PostgreSQL's `{program}` was not found on PATH or in /usr/lib/postgresql/*/bin; "
            "install the server (apt-get install postgresql) or add its bin folder to PATH"
        )
    return str(candidates[-1])


def as_server_user(command: list[str]) -> list[str]:
    if shutil.which("runuser"):
        return ["runuser", "-u", SERVER_USER, "--", *command]
    return ["su", SERVER_USER, "-s", "/bin/sh", "-c", shlex.join(command)]


def chown_to_server_user(path: Path) -> None:
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        # PostgreSQL refuses root; give it the conventional system user.
        command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        created = subprocess.run([*command, SERVER_USER], capture_output=True, text=True)
        if created.returncode != 0:
            raise LocalPostgresError(
                f"PostgreSQL cannot run as root and there is no `{SERVER_USER}` user "
                f"({created.stderr.strip()}); create it with `useradd --system {SERVER_USER}` "
                "or run as a non-root user"
            ) from None
        user = pwd.getpwnam(SERVER_USER)
    os.chown(path, user.pw_uid, user.pw_gid)


def free_port(port: int = 0) -> int | None:
    """Bind 127.0.0.1:``port`` for a moment: the port got (a free one for 0), None if taken."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return None
        return probe.getsockname()[1]


def start_pooler(server: LocalPostgres) -> None:
    """PgBouncer in front of ``server``, if installed; its URL goes to ``pooled-url``."""
    from tools.pgbouncer import PROGRAM, LocalPgBouncer  # it builds on this module

    if not Path(PROGRAM).exists():
        print(
            f"no PgBouncer ({PROGRAM}): apt-get install -y pgbouncer for many workers",
            file=sys.stderr,
        )
        return
    pooler = LocalPgBouncer(server).start()
    write_private(server.root / "pooled-url", pooler.url() + "\n")
    print(
        f"PgBouncer on 127.0.0.1:{pooler.port} (transaction pooling, {pooler.pool_size} server "
        f"connections); its URL is in {server.root / 'pooled-url'}",
        file=sys.stderr,
    )


def stop_pooler(server: LocalPostgres) -> None:
    from tools.pgbouncer import LocalPgBouncer

    LocalPgBouncer(server).stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.postgres",
        description="Start or stop a local PostgreSQL for focaltune (state in ./.focaltune-pg).",
    )
    parser.add_argument("action", choices=["up", "down"], help="up: start, print URL; down: stop")
    parser.add_argument("--root", type=Path, default=Path(STATE_DIR), help="state folder")
    args = parser.parse_args(argv)
    server = LocalPostgres(args.root)
    try:
        if args.action == "up":
            server.start()
            start_pooler(server)
            print(server.url())
        else:
            stop_pooler(server)  # also when the server went away on its own
            if server.running():
                server.stop()
                print(f"stopped the PostgreSQL server in {server.root}", file=sys.stderr)
            else:
                print(f"no PostgreSQL server running in {server.root}", file=sys.stderr)
    except LocalPostgresError as err:
        print(f"tools.postgres: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
