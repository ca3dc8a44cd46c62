"""Part 1: the search through the product: ``focaltune worker`` on a SQLite study.

The study is created with ``search.study.create_study`` (as shipped: multivariate TPE and
Hyperband; the ablation: random sampling, no pruner) and the workers are real
subprocesses (``python -m search.cli worker --timeout``), exactly as a user starts them;
the clock runs from study creation, so process start-up, tokenisation (the cache starts
cold) and the per-trial artifacts are all in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmarks.anytime import AnytimeRun, from_study
from benchmarks.workload import ROOT
from search.config import StudyConfig
from search.study import create_study
from storage import open_storage


def fresh_folder(folder: Path) -> Path:
    """An empty ``folder``: no study, token cache or artifacts left from an earlier run."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    # Each worker gets its share of the cores, as `focaltune launch` gives it.
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def start_workers(
    url: str, name: str, n: int, threads: int, logs: Path, timeout: float
) -> list[subprocess.Popen]:
    procs = []
    for index in range(n):
        cmd = [sys.executable, "-m", "search.cli", "worker", "--storage", url, "--study", name]
        cmd += ["--timeout", str(timeout)]
        with open(logs / f"worker-{index}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [*cmd, "--worker-index", str(index)],
                    cwd=ROOT,
                    env=worker_env(max(1, threads // n)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def run_focaltune(
    base: StudyConfig,
    work: Path,
    *,
    name: str,
    workers: int,
    threads: int,
    budget_seconds: float,
    warm_start: list[dict[str, Any]] | None = None,
) -> AnytimeRun:
    """Create the study (``warm_start``: another study's best params, enqueued first), run
    ``workers`` worker processes with ``--timeout budget_seconds`` (no trial starts after
    it), read the study back."""
    folder = fresh_folder(work)
    url = f"sqlite:///{folder / 'focaltune.db'}"
    started_at, started = datetime.now(), time.perf_counter()
    create_study(base, open_storage(url, heartbeat_interval=None), warm_start)
    procs = start_workers(url, base.study.name, workers, threads, folder, budget_seconds)
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - started
    if any(codes):
        tail = (folder / "worker-0.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"focaltune worker exit codes {codes}; worker-0.log ends:\n{tail}")
    trials = optuna.load_study(study_name=base.study.name, storage=url).get_trials()
    return AnytimeRun(
        name, wall, from_study(trials, started_at), where_time_goes(trials, started_at)
    )


def where_time_goes(trials: list[FrozenTrial], started_at: datetime) -> dict[str, Any]:
    """Start-up (study creation, worker imports, data) and the trials' own seconds."""
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    first = min((t.datetime_start for t in done if t.datetime_start), default=None)
    seconds = [t.duration.total_seconds() for t in done if t.duration]
    train = sum(t.user_attrs.get("train_seconds", 0.0) for t in done)
    return {
        "until_first_trial_seconds": None
        if first is None
        else (first - started_at).total_seconds(),
        "trial_seconds_total": round(sum(seconds), 1),
        "mean_trial_seconds": round(sum(seconds) / max(len(seconds), 1), 2),
        "complete_trials_train_seconds": round(train, 1),
        "trials_failed": sum(t.state == TrialState.FAIL for t in trials),
    }
