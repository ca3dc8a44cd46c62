"""Serve optuna-dashboard for a storage, with the artifact folders of its studies attached.

optuna-dashboard takes one artifact store, but every study may keep its artifacts in
its own folder (``tracking.artifacts``), so the store here reads from all of them: an
artifact id is a UUID, unique across folders. The dashboard has no authentication and
its API can delete studies, so it binds to loopback unless told otherwise.

Reading does not disturb running workers: the storage is opened without heartbeats, and
SQLite files are in WAL mode (``storage.open_storage``), where readers never block the
writer.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import BinaryIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from search.config import parse_study_config
from search.reporting import AtomicArtifactStore, artifact_dir, default_artifact_dir
from search.study import CONFIG_ATTR
from storage import describe, open_storage
from trainer.errors import BadInput

log = logging.getLogger(__name__)


def study_artifact_dirs(storage: optuna.storages.BaseStorage, url: str) -> list[Path]:
    """The artifact folder of every study in ``storage`` (the default one first)."""
    folders = [default_artifact_dir(url)]
    for study in storage.get_all_studies():
        raw = study.user_attrs.get(CONFIG_ATTR)
        if raw is None:
            continue  # not a focaltune study: its artifacts, if any, are in the default
        try:
            folder = artifact_dir(parse_study_config(raw, study.study_name), url)
        except BadInput as err:
            log.warning("study %s: config unreadable, artifacts not served (%s)", study, err)
            continue
        if folder not in folders:
            folders.append(folder)
    return folders


class StudyArtifacts:
    """An Optuna artifact store over several folders; new uploads go to the first."""

    def __init__(self, folders: Callable[[], list[Path]]) -> None:
        self._find_folders = folders
        self.folders = folders()

    def _find(self, artifact_id: str) -> tuple[FileSystemArtifactStore, BinaryIO]:
        """The store holding ``artifact_id`` and the artifact, opened (once)."""
        for refresh in (False, True):
            if refresh:  # a study created after the dashboard started may add a folder
                self.folders = self._find_folders()
            for folder in self.folders:
                store = FileSystemArtifactStore(folder)
                try:
                    return store, store.open_reader(artifact_id)
                except ArtifactNotFound:
                    continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of {self.folders}")

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._find(artifact_id)[1]

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        AtomicArtifactStore(self.folders[0]).write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        store, handle = self._find(artifact_id)
        handle.close()
        store.remove(artifact_id)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser keeps connections open; never wait for them on exit


class _IPv6Server(_ThreadedServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        log.debug("%s %s", self.address_string(), format % args)


def open_dashboard(url: str, artifacts: Path | None = None) -> tuple[object, list[Path]]:
    """The dashboard's WSGI app for ``url`` and the artifact folders it serves."""
    if artifacts is not None and not artifacts.is_dir():
        raise BadInput(f"--artifacts {artifacts}: folder not found; pass an existing folder")
    storage = open_storage(url, heartbeat_interval=None, existing=True)
    store = StudyArtifacts(
        (lambda: [artifacts.resolve()]) if artifacts else lambda: study_artifact_dirs(storage, url)
    )
    return optuna_dashboard.wsgi(storage, artifact_store=store), store.folders


def serve(
    url: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifacts: Path | None = None,
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
) -> None:
    """Serve the dashboard until interrupted; port 0 picks a free port (echoed)."""
    if not is_loopback(host):
        warn(
            f"warning: the dashboard listens on {host}, reachable from other machines; it has "
            "no authentication and its API can delete studies. Prefer --host 127.0.0.1 and "
            "an SSH tunnel."
        )
    app, folders = open_dashboard(url, artifacts)
    server_class = _IPv6Server if ":" in host else _ThreadedServer
    try:
        httpd = make_server(host, port, app, server_class, _QuietHandler)
    except OSError as err:
        raise BadInput(
            f"--host {host} --port {port}: cannot listen ({err.strerror}); "
            "choose another port (--port 0 picks a free one)"
        ) from None
    shown = f"[{host}]" if ":" in host else host
    echo(f"optuna-dashboard for {describe(url)}: http://{shown}:{httpd.server_port}/dashboard")
    echo(f"artifacts from: {', '.join(str(f) for f in folders)}")
    with httpd:
        httpd.serve_forever()
