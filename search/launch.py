"""`launch`: create the study if needed, run N local workers, show progress until done.

Workers are separate processes (``focaltune worker``), exactly what a user would start
by hand on other machines. The storage URL reaches them through the environment, not
the command line, so a password never shows in ``ps``. With GPUs each worker gets one;
without, the CPU threads are split between them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import optuna
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from search.worker import counts
from trainer.devices import VISIBLE, visible_gpus

log = logging.getLogger(__name__)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass
class LaunchResult:
    exit_codes: list[int]
    seconds: float


def worker_env(index: int, n_workers: int, url: str, gpus: list[str]) -> dict[str, str]:
    """Worker ``index``'s environment: one of the parent's own GPUs (``gpus``, as
    CUDA_VISIBLE_DEVICES entries: 2,3 stays 2,3; UUIDs and MIG names pass through), or
    its share of the CPU threads."""
    env = dict(os.environ, FOCALTUNE_STORAGE=url, TOKENIZERS_PARALLELISM="false")
    if gpus:
        env[VISIBLE] = gpus[index % len(gpus)]
    else:
        threads = max(1, (os.cpu_count() or 1) // n_workers)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def share_gpus(n_workers: int) -> list[str]:
    """The GPUs to hand out; a warning when workers must share them."""
    gpus = visible_gpus()
    if len(gpus) < n_workers and gpus:
        log.warning(
            f"{n_workers} workers on {len(gpus)} GPU(s): up to "
            f"{-(-n_workers // len(gpus))} share each GPU's memory and time"
        )
    return gpus


def start_workers(url: str, study: str, n: int, extra: list[str]) -> list[subprocess.Popen]:
    procs, gpus = [], share_gpus(n)
    for i in range(n):
        cmd = [sys.executable, "-m", "search.cli", "worker", "--study", study]
        cmd += ["--worker-index", str(i), *extra]
        procs.append(
            subprocess.Popen(
                cmd,
                env=worker_env(i, n, url, gpus),
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
