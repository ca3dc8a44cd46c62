"""`launch`: create the study if needed, run N local workers, show progress until done.

Workers are separate processes (``focaltune worker``), exactly what a user would start
by hand on other machines. The storage URL reaches them through the environment, not
the command line, so a password never shows in ``ps``. With GPUs each worker gets one;
without, the CPU threads are split between them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import optuna
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from search.worker import counts

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass
class LaunchResult:
    exit_codes: list[int]
    seconds: float


def worker_env(index: int, n_workers: int, url: str) -> dict[str, str]:
    env = dict(os.environ, FOCALTUNE_STORAGE=url, TOKENIZERS_PARALLELISM="false")
    gpus = torch.cuda.device_count()
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    else:
        threads = max(1, (os.cpu_count() or 1) // n_workers)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def start_workers(url: str, study: str, n: int, extra: list[str]) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "search.cli", "worker", "--study", study]
        cmd += ["--worker-index", str(i), *extra]
        procs.append(
            subprocess.Popen(
                cmd,
                env=worker_env(i, n, url),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
        )
    return procs


def relay(proc: subprocess.Popen, index: int, console: Console, verbose: bool) -> None:
    """Print a worker's per-trial lines (and everything, when verbose) above the bar."""
    for line in proc.stdout:
        line = line.rstrip()
        if verbose or line.startswith(("trial ", "worker ")) or "error" in line.lower():
            console.print(f"w{index} {line}", highlight=False, markup=False)


def best_text(study: optuna.Study) -> str:
    try:
        return f"best {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        return "best -"


def launch(
    url: str, study: optuna.Study, budget: int, n_workers: int, *, verbose: bool = False
) -> LaunchResult:
    console = Console()
    started = time.monotonic()
    procs = start_workers(url, study.study_name, n_workers, [])
    relays = [
        threading.Thread(target=relay, args=(p, i, console, verbose), daemon=True)
        for i, p in enumerate(procs)
    ]
    for t in relays:
        t.start()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(
            *columns, TextColumn("{task.fields[best]}"), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task("trials", total=budget, best="")
            while any(p.poll() is None for p in procs):
                c = counts(study)
                bar.update(task, completed=sum(c[s] for s in FINISHED), best=best_text(study))
                time.sleep(1.0)
            c = counts(study)
            bar.update(task, completed=sum(c[s] for s in FINISHED), best=best_text(study))
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGTERM)  # each fails its trial cleanly; it is retried later
        for p in procs:
            p.wait()
    for t in relays:
        t.join(timeout=5)
    return LaunchResult([p.wait() for p in procs], time.monotonic() - started)
