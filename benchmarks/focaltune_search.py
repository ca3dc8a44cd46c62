"""Part 1b: the same search through the product: ``focaltune worker`` on a SQLite study.

The study is created with ``search.study.create_study`` (default pruner: Hyperband) and
the workers are real subprocesses (``python -m search.cli worker``), exactly as a user
starts them; the clock runs from study creation to the last worker's exit, so process
start-up, tokenisation (the cache starts cold) and the per-trial artifacts are all in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmarks.workload import ROOT, SearchResult, trial_rows
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


def start_workers(url: str, name: str, n: int, threads: int, logs: Path) -> list[subprocess.Popen]:
    procs = []
    for index in range(n):
        cmd = [sys.executable, "-m", "search.cli", "worker", "--storage", url, "--study", name]
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


def trained_samples(trial: FrozenTrial, train_rows: int, evals_per_epoch: int) -> int:
    """Samples a trial trained on: all its epochs, or up to its last evaluation if pruned."""
    if trial.state == TrialState.COMPLETE:
        return train_rows * int(trial.params["epochs"])
    return round(train_rows * len(trial.intermediate_values) / evals_per_epoch)


def training_rate(complete: list[FrozenTrial], train_rows: int, evals_per_epoch: int) -> float:
    """Training-only samples/s over the COMPLETE trials, from what each recorded (its
    evaluation time excluded); pruned trials record no timing."""
    rated = [t for t in complete if t.user_attrs.get("train_samples_per_second")]
    samples = [trained_samples(t, train_rows, evals_per_epoch) for t in rated]
    rates = [t.user_attrs["train_samples_per_second"] for t in rated]
    seconds = [n / rate for n, rate in zip(samples, rates, strict=True)]
    return sum(samples) / max(sum(seconds), 1e-9)


def summarise(study: optuna.Study, wall: float, train_rows: int, base: StudyConfig) -> SearchResult:
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    epe = base.train.evals_per_epoch
    durations = [t.duration.total_seconds() for t in done if t.duration]
    first_start = min((t.datetime_start for t in done if t.datetime_start), default=None)
    breakdown = {
        "trials": sum(durations),
        "complete_trials_train": sum(t.user_attrs.get("train_seconds", 0.0) for t in complete),
    }
    if first_start is not None:
        breakdown["_first_trial_start"] = first_start.timestamp()
    return SearchResult(
        wall_seconds=wall,
        complete=len(complete),
        pruned=len(done) - len(complete),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        best_accuracy=study.best_value if complete else None,
        train_samples=sum(trained_samples(t, train_rows, epe) for t in done),
        samples_per_second=training_rate(complete, train_rows, epe),
        trial_seconds=durations,
        trials=trial_rows(done),
        breakdown=breakdown,
    )


def run_focaltune(
    base: StudyConfig, work: Path, *, train_rows: int, workers: int, threads: int
) -> SearchResult:
    """Create the study, run ``workers`` worker processes to the budget, read the study."""
    folder = fresh_folder(work)
    url = f"sqlite:///{folder / 'focaltune.db'}"
    started_wall, started = time.time(), time.perf_counter()
    create_study(base, open_storage(url, heartbeat_interval=None))
    created = time.perf_counter() - started
    procs = start_workers(url, base.study.name, workers, threads, folder)
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - started
    if any(codes):
        tail = (folder / "worker-0.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"focaltune worker exit codes {codes}; worker-0.log ends:\n{tail}")
    study = optuna.load_study(study_name=base.study.name, storage=url)
    result = summarise(study, wall, train_rows, base)
    first = result.breakdown.pop("_first_trial_start", None)
    result.breakdown["create_study"] = created
    if first is not None:  # study creation + worker start-up + data loading
        result.breakdown["until_first_trial"] = first - started_wall
    return result
