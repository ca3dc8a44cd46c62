"""A real, local PgBouncer in front of a ``LocalPostgres``, for `make db-up`, tests and
``benchmarks/scale.py``.

Transaction pooling: each worker keeps its 2 client connections, but holds a server
connection only for the length of a transaction, so hundreds of workers share
``pool_size`` server connections. Like PostgreSQL, PgBouncer refuses to run as root;
then it runs as the ``postgres`` user, with its files in the server's private folder.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from tools.postgres import (
    SUPERUSER,
    LocalPostgres,
    LocalPostgresError,
    chown_to_server_user,
    free_port,
    write_private,
)

PROGRAM = "/usr/sbin/pgbouncer"  # Debian's package; the README names it


class LocalPgBouncer:
    """PgBouncer on 127.0.0.1 for ``server``'s databases (the server must be started)."""

    def __init__(self, server: LocalPostgres, *, pool_size: int = 20, max_client_conn: int = 1000):
        self.server, self.pool_size, self.max_client_conn = server, pool_size, max_client_conn
        self.port: int | None = None

    @property
    def home(self) -> Path:
        return self.server._home() / "pgbouncer"

    def start(self) -> LocalPgBouncer:
        if not Path(PROGRAM).exists():
            raise LocalPostgresError(
                f"{PROGRAM} not found; install it with `apt-get install -y pgbouncer`"
            )
        if self.running():
            self.stop()  # settings may differ from the last start
        self.home.mkdir(mode=0o700, exist_ok=True)
        self.port = free_port()
        write_private(self.home / "userlist.txt", f'"{SUPERUSER}" "{self.server.password}"\n')
        write_private(self.home / "pgbouncer.ini", self._ini())
        if self.server._as_root:
            for path in (self.home, self.home / "userlist.txt", self.home / "pgbouncer.ini"):
                chown_to_server_user(path)
        self.server._run([PROGRAM, "-d", str(self.home / "pgbouncer.ini")])
        self._wait_listening()
        return self

    def stop(self) -> None:
        """Stop at once (open client connections are closed)."""
        pid = self._pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._alive(pid):
            os.kill(pid, signal.SIGKILL)

    def running(self) -> bool:
        pid = self._pid()
        return pid is not None and self._alive(pid)

    def url(self, database: str = SUPERUSER) -> str:
        """The server's URL for ``database``, through this pooler."""
        if self.port is None:
            raise LocalPostgresError("PgBouncer has not been started")
        direct = make_url(self.server.url(database))
        return direct.set(port=self.port).render_as_string(hide_password=False)

    def __enter__(self) -> LocalPgBouncer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _ini(self) -> str:
        return "\n".join(
            [
                "[databases]",
                f"* = host=127.0.0.1 port={self.server.port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = scram-sha-256",
                f"auth_file = {self.home / 'userlist.txt'}",
                "pool_mode = transaction",
                f"default_pool_size = {self.pool_size}",
                f"max_db_connections = {self.pool_size}",
                f"max_client_conn = {self.max_client_conn}",
                # A worker waits for a free server connection as long as it takes (default:
                # disconnected after 120 s, which 128 workers on 2 cores reached at start-up).
                "query_wait_timeout = 0",
                # Transaction mode: nothing session-level survives a transaction anyway.
                "server_reset_query =",
                # psycopg and JDBC-style clients send it at start-up; PgBouncer does not track it.
                "ignore_startup_parameters = extra_float_digits",
                f"logfile = {self.home / 'pgbouncer.log'}",
                f"pidfile = {self.home / 'pgbouncer.pid'}",
                "",
            ]
        )

    def _pid(self) -> int | None:
        """The pid in the pidfile, if that process is this PgBouncer (a pidfile left by a
        killed one may name a pid reused since)."""
        try:
            pid = int((self.home / "pgbouncer.pid").read_text().strip())
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.home / "pgbouncer.ini").encode() in command else None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        log = self.home / "pgbouncer.log"
        tail = log.read_text(errors="replace").splitlines()[-10:] if log.exists() else []
        raise LocalPostgresError(
            f"PgBouncer did not listen on 127.0.0.1:{self.port}; the end of {log}:\n"
            + "\n".join(tail)
        )
