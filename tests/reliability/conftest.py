"""Shared parts of the reliability suites: a scratch workspace whose every file is
fingerprinted around a CLI call, the one-line-error check, tiny bundles, tmpfs mounts."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import yaml

from tests.search.conftest import ROOT, focaltune, write_config  # noqa: F401 (write_config: fixture)

ERROR_PREFIX = "focaltune: error: "
# A "billion laughs" YAML: nine levels of ten aliases, 10 ** 9 values once expanded.
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in pairwise("abcdefghi")
)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, on one thread (the machine has 2 shared cores)."""
    return focaltune(*args, env={"OMP_NUM_THREADS": "1", **(env or {})}, timeout=timeout)


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, exactly one stderr line (the error), no traceback; the line holds ``words``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), result.stderr[-3000:]
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    return lines[0]


def fingerprint(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: its sha256 (files) or 'dir'."""
    prints = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        prints[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return prints


def free_port() -> int:
    """A port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Workspace:
    """A scratch folder with a valid study config; ``run`` fingerprints it before the call."""

    root: Path
    base: dict
    train: Path
    url: str
    request: pytest.FixtureRequest
    before: dict[str, str] = field(default_factory=dict)

    def fixture(self, name: str) -> Any:
        """Another fixture, set up only by the cases that need it (e.g. PostgreSQL)."""
        return self.request.getfixturevalue(name)

    def config(self, overrides: dict | None = None, name: str = "study.yaml") -> Path:
        raw = merge(copy.deepcopy(self.base), overrides or {})
        path = self.root / name
        path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
        return path

    def frame(self) -> pd.DataFrame:
        return pd.read_csv(self.train, dtype=str, keep_default_na=False)

    def csv(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.root / name
        frame.to_csv(path, index=False)
        return path

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        self.before = fingerprint(self.root)
        return cli(*args, env=env)

    def assert_untouched(self) -> None:
        """Nothing created, changed or removed under the workspace by the last ``run``."""
        after = fingerprint(self.root)
        added = sorted(set(after) - set(self.before))
        changed = sorted(k for k in self.before if after.get(k) != self.before[k])
        assert not added and not changed, f"created {added}, changed or removed {changed}"


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge ``overrides`` into ``base``; a value of None deletes the key."""
    for key, value in overrides.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture
def ws(tmp_path: Path, write_config, request: pytest.FixtureRequest) -> Workspace:  # noqa: F811
    """A workspace whose config trains the tiny backbone on a 1,200-review slice."""
    base = yaml.safe_load(write_config("s").read_text())
    (tmp_path / "s.yaml").unlink()
    train = Path(base["data"]["train"])
    root = tmp_path / "ws"
    root.mkdir()
    return Workspace(root, base, train, f"sqlite:///{root / 'study.db'}", request)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount small real tmpfs file systems (root only); all unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(name: str, size: str = "1m") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder])
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", folder], check=False)


def remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", folder], check=True)


LABELS = ["0", "1", "2", "3"]


@pytest.fixture(scope="session")
def bundle_template(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    """A real 2-member bundle (safetensors weights, tokenizers, sha256 manifest), built once."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainer.final.bundle import save_member, write_manifest

    root = tmp_path_factory.mktemp("bundle") / "bundle"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_backbone, num_labels=len(LABELS), dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    names = ["member-1", "member-2"]
    for name in names:
        save_member(model, tokenizer, root / "members" / name, LABELS)
    data = {"text_column": "review", "label_column": "label", "id_column": None, "max_length": 32}
    manifest = {
        "label_names": LABELS,
        "data": data,
        "members": [{"name": n, "path": f"members/{n}"} for n in names],
        "weights": [0.5, 0.5],
        "bias": None,
        "bias_applied": False,
    }
    write_manifest(root, manifest)
    return root


def new_study(
    write: Callable[..., Path], url: str, name: str, artifacts: Path, **sections: dict
) -> optuna.Study:
    """Create study ``name`` from the small test config with its artifacts in ``artifacts``
    (the default for PostgreSQL is ./focaltune-artifacts, inside the repository)."""
    from search.config import load_study_config
    from search.study import create_study
    from storage import open_storage

    path = write(name, **sections)
    raw = yaml.safe_load(path.read_text())
    raw["tracking"] = {"artifacts": str(artifacts)}
    path.write_text(yaml.safe_dump(raw))
    return create_study(load_study_config(path), open_storage(url, heartbeat_interval=None))


def bundle(
    change: Callable[[Path], object] | None = None, output: str = "out.csv"
) -> Callable[[Workspace], list[str]]:
    """`predict` with a copy of a real bundle, ``change``d first (tampered, files deleted)."""

    def setup(ws: Workspace) -> list[str]:
        root = ws.root / "bundle"
        shutil.copytree(ws.fixture("bundle_template"), root)
        ws.csv("new.csv", ws.frame().head(20))
        if change is not None:
            change(root)
        io = ["--input", str(ws.root / "new.csv"), "--output", str(ws.root / output)]
        return ["predict", str(root), *io, "--no-progress"]

    return setup


def edit_manifest(root: Path) -> None:
    manifest = json.loads((root / "ensemble.json").read_text())
    manifest["weights"] = [0.9, 0.1]  # someone "tunes" the ensemble by hand
    (root / "ensemble.json").write_text(json.dumps(manifest, indent=2))


def flip_weight_byte(root: Path) -> None:
    path = root / "members" / "member-2" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def run_measured(args: list[str], folder: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI, polling the child's peak resident memory (VmHWM, MB) until it exits."""
    out, err = folder / "stdout", folder / "stderr"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "search.cli", *args],
            cwd=ROOT,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            stdout=stdout,
            stderr=stderr,
        )
        peak = 0
        while proc.poll() is None:
            with contextlib.suppress(OSError, AttributeError):
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak = max(peak, int(re.search(r"VmHWM:\s+(\d+)", status).group(1)))
            time.sleep(0.1)
    result = subprocess.CompletedProcess(args, proc.returncode, out.read_text(), err.read_text())
    return result, peak / 1024
