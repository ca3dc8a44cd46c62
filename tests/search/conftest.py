"""Study configs on real data slices and a tiny offline backbone, plus worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def write_config(tmp_path: Path, nsmc_csv, tiny_backbone):
    """Write a small study YAML (fast trials) with optional overrides per section."""

    def write(name: str = "s", storage: str | None = None, **sections: dict) -> Path:
        raw = {
            "study": {"name": name, "n_trials": 4, "heartbeat_interval": 2, "grace_period": 6},
            "data": {
                "train": str(nsmc_csv(1200)),
                "max_train_samples": 400,
                "max_eval_samples": 150,
                "max_length": 32,
            },
            "model": {"name_or_path": str(tiny_backbone)},
            "train": {"batch_size": 32, "evals_per_epoch": 2},
            "space": {"learning_rate": [5.0e-4, 5.0e-3], "epochs": [1, 2]},
            "tracking": {"artifacts": str(tmp_path / "artifacts")},
        }
        if storage:
            raw["study"]["storage"] = storage
        for key, values in sections.items():
            raw[key].update(values)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


def focaltune(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (as a user would) and capture its output."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=kw.pop("timeout", 300),
        **kw,
    )


def start_worker(url: str, study: str, index: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, FOCALTUNE_STORAGE=url, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "search.cli",
            "worker",
            "--study",
            study,
            "--worker-index",
            str(index),
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
