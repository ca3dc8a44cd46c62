"""Study configs on real data slices and a tiny offline backbone, worker processes, drawn
trials through the real objective, and the dashboard as a process."""

from __future__ import annotations

import itertools
import json
import os
import selectors
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.config import StudyConfig, parse_study_config
from search.objective import make_objective
from search.reporting import make_trial_reporter
from search.study import create_study, make_pruner, make_sampler, stored_config
from search.trial_run import run_trial
from storage import open_storage
from tests.conftest import read_nsmc, stub_backbone
from trainer.callbacks import EvalHook, EvalRecord
from trainer.config import TrainConfig
from trainer.metrics import classification_metrics
from trainer.train import TrainResult

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


# Drawn trials, shared by the reporting, dashboard, browser and tracking tests: real SQLite
# studies whose trials run through the real objective and reporter; only the training is
# replaced by seeded logits scored with the real metrics, so a trial takes milliseconds.

KOREAN = ["매우 부정", "부정", "긍정", "매우 긍정"]
# What the worker builds from the stored config; pruning starts at the second evaluation, so
# a trial whose second evaluation is below the first trial's is pruned there.
MEDIAN_FROM_THE_SECOND_EVALUATION = {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 2}


def study_config(train: Path, name: str = "watch", **tracking: object) -> StudyConfig:
    """A study on ``train`` with Korean label names and a stub backbone beside the data."""
    raw = {
        "study": {"name": name, "pruner": MEDIAN_FROM_THE_SECOND_EVALUATION},
        "data": {"train": str(train), "labels": KOREAN},
        "model": {"name_or_path": str(stub_backbone(Path(train).parent / "stub-backbone"))},
        "tracking": tracking,
    }
    return parse_study_config(raw, "test config")


def eval_records(curve: list[float], seed: int = 0) -> list[EvalRecord]:
    """One record per evaluation; ``curve`` sets how often the logits favour the true label."""
    labels = read_nsmc("train", 300)["label"].to_numpy()
    rng = np.random.default_rng(seed)
    records = []
    for index, skill in enumerate(curve, start=1):
        logits = rng.normal(size=(len(labels), 4))
        logits[np.arange(len(labels)), labels] += 4.0 * (rng.random(len(labels)) < skill)
        metrics = classification_metrics(logits, labels, 4)
        records.append(EvalRecord(index, index / 2, index * 10, metrics))
    return records


def drawn_training(
    curve: list[float], first_seed: int = 0, error: BaseException | None = None
) -> Callable[..., TrainResult]:
    """A stand-in for ``train_model``: each call hands ``eval_records(curve)`` (seeds counting
    from ``first_seed``) to ``on_evaluate`` one by one, then raises ``error`` or returns."""
    seeds = itertools.count(first_seed)

    def train_model(cfg: TrainConfig, *, on_evaluate: EvalHook | None = None, **_: Any):
        history = eval_records(curve, seed=next(seeds))
        for record in history:
            if on_evaluate is not None:
                on_evaluate(record)  # the objective's hook: may raise TrialPruned
        if error is not None:
            raise error
        best = max(history, key=lambda r: r.accuracy)
        return TrainResult(history, best, KOREAN, 0.01, 0.01, 1000.0, "cpu")

    return train_model


def run_trials(
    study: optuna.Study,
    cfg: StudyConfig,
    reporter: Callable,
    curve: list[float],
    n_trials: int = 1,
    error: BaseException | None = None,
    catch: tuple[type[Exception], ...] = (),
) -> None:
    """``n_trials`` trials through the real ``make_objective`` with ``reporter`` as its hook,
    each trained by ``drawn_training`` (seeded by its trial number)."""
    train = drawn_training(curve, first_seed=len(study.trials), error=error)
    objective = make_objective(cfg, splits=None, on_trial_end=reporter)  # no data is read
    with mock.patch("search.objective.train_model", train):
        for _ in range(n_trials):  # as the worker runs them
            run_trial(study, objective, catch)


def finished_study(url: str, cfg: StudyConfig) -> optuna.Study:
    """A study made by ``create_study`` (config stored in it, as the dashboard reads it) and
    loaded as a worker loads it, with one COMPLETE trial and one pruned at evaluation 2 by the
    study's own pruner, reported by the real reporter with the stored config."""
    storage = open_storage(url, heartbeat_interval=None)
    stored = stored_config(create_study(cfg, storage))
    study = optuna.load_study(
        study_name=stored.study.name,
        storage=storage,
        sampler=make_sampler(stored, worker_index=0),
        pruner=make_pruner(stored),
    )
    reporter = make_trial_reporter(study, stored, url)
    run_trials(study, stored, reporter, [0.2, 0.6, 0.4])
    run_trials(study, stored, reporter, [0.1, 0.15, 0.3])
    return study


# `focaltune dashboard` as a real process, read over HTTP (the dashboard and browser tests).


def start_dashboard(
    *args: str, env: dict | None = None, cwd: Path = ROOT
) -> tuple[subprocess.Popen, str, str]:
    """Start `focaltune dashboard --port 0 ...`; returns the process, its host:port and the
    line it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "dashboard", "--port", "0", *args],
        cwd=cwd,
        env=dict(os.environ, **(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while sel.select(timeout=120):
            line = proc.stdout.readline()
            if not line:
                break
            if "http://" in line:
                return proc, line.split("http://", 1)[1].split("/dashboard")[0], line
    proc.kill()
    raise AssertionError(f"dashboard did not start: {proc.stderr.read()[-2000:]}")


def get(base: str, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"http://{base}{path}", timeout=30) as response:
        return response.status, response.headers["Content-Type"], response.read()


def get_json(base: str, path: str) -> dict:
    return json.loads(get(base, path)[2])


def study_ids(base: str) -> dict[str, int]:
    return {
        s["study_name"]: s["study_id"] for s in get_json(base, "/api/studies")["study_summaries"]
    }


def states(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {s.name: sum(t.state == s for t in trials) for s in TrialState}


def finish(procs: list[subprocess.Popen], timeout: float = 420) -> list[str]:
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        outputs.append(out)
    return outputs
