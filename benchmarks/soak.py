"""Soak (`make soak`): workers on a real PostgreSQL, one killed with SIGKILL every ~20 s.

Four `focaltune worker` processes run a study of tiny trials (a 2-layer, 32-wide BERT
built offline from 1,000 nsmc4 reviews; 300 train rows, 32 tokens). Every ~20 s a random
live worker is killed with SIGKILL, as a preempted machine would be, and started again.
At the end the study must show that nothing was lost: the budget met exactly, no trial
RUNNING or WAITING, every killed trial retried with its parameters, trial numbers
unique. The counts are printed; the exit status is 1 on any violation.

    .venv/bin/python benchmarks/soak.py [--workers 4 --trials 120 --kill-every 20]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the product's packages sit beside benchmarks/

from search.config import load_study_config  # noqa: E402
from search.study import create_study  # noqa: E402
from storage import open_storage  # noqa: E402
from tools.postgres import LocalPostgres  # noqa: E402
from trainer.backbone import build_backbone  # noqa: E402

STUDY = "soak"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="worker processes (4)")
    # 40 tiny trials finish in about a minute here (one kill); 120 give ~4 min and ~10 kills.
    parser.add_argument("--trials", type=int, default=120, help="the study's budget (120)")
    parser.add_argument("--kill-every", type=float, default=20.0, help="mean seconds (20)")
    parser.add_argument("--minutes", type=float, default=15.0, help="give up after (15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the victim choice (0)")
    default_data = os.environ.get("FOCALTUNE_NSMC4", ROOT.parent / "shared" / "data" / "nsmc4")
    parser.add_argument("--data", type=Path, default=Path(default_data), help="nsmc4 folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args(argv)


def prepare(work: Path, data: Path, budget: int) -> Path:
    """Data slice, offline backbone and study config; returns the config's path."""
    source = data / "train.csv.gz"
    if not source.is_file():
        raise SystemExit(f"soak: {source} not found; pass --data or set FOCALTUNE_NSMC4")
    train = work / "train.csv"
    pd.read_csv(source, nrows=1000).to_csv(train, index=False)
    backbone = work / "backbone"
    build_backbone(train, backbone, vocab_size=1000, layers=2, hidden=32, heads=2, max_length=32)
    config = {
        "study": {
            "name": STUDY,
            "n_trials": budget,
            "heartbeat_interval": 2,
            "grace_period": 8,
            "max_retry": 50,  # a trial may be killed again and again: it must still be retried
        },
        "data": {
            "train": str(train),
            "max_train_samples": 300,
            "max_eval_samples": 100,
            "max_length": 32,
        },
        "model": {"name_or_path": str(backbone)},
        "train": {"batch_size": 32, "evals_per_epoch": 2},
        "space": {"learning_rate": [5e-4, 5e-3], "epochs": [1, 2]},
        "tracking": {"artifacts": str(work / "artifacts")},
    }
    path = work / "soak.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Fleet:
    """Worker processes by index; a killed worker is started again under the same index."""

    def __init__(self, url: str, work: Path) -> None:
        self.env = dict(
            os.environ,
            FOCALTUNE_STORAGE=url,  # never on the command line (ps shows it to everyone)
            FOCALTUNE_CACHE=str(work / "cache"),
            OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            WANDB_MODE="offline",
        )
        self.logs = work / "logs"
        self.logs.mkdir()
        self.procs: dict[int, subprocess.Popen] = {}
        self.starts = 0

    def start(self, index: int) -> None:
        self.starts += 1
        log = open(self.logs / f"worker-{index}-{self.starts}.log", "w")  # noqa: SIM115
        command = [sys.executable, "-m", "search.cli", "worker", "--study", STUDY]
        self.procs[index] = subprocess.Popen(
            [*command, "--worker-index", str(index)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> list[int]:
        return [i for i, proc in self.procs.items() if proc.poll() is None]

    def kill(self, index: int) -> None:
        self.procs[index].kill()
        self.procs[index].wait()

    def stop_all(self) -> None:
        for index in self.alive():
            self.kill(index)


def run(fleet: Fleet, study: optuna.Study, args: argparse.Namespace) -> tuple[int, list[str]]:
    """Kill and restart workers until every worker has exited; returns (kills, problems)."""
    rng = random.Random(args.seed)
    deadline = time.monotonic() + 60 * args.minutes
    wait_until_running(study, deadline)  # kills during start-up would test nothing
    start = time.monotonic()
    next_kill, kills = start + args.kill_every, 0
    while fleet.alive():
        if time.monotonic() > deadline:
            fleet.stop_all()
            return kills, [f"not finished after {args.minutes} minutes"]
        if time.monotonic() >= next_kill and not budget_met(study, args.trials):
            victim = rng.choice(fleet.alive())
            fleet.kill(victim)
            kills += 1
            elapsed = time.monotonic() - start
            print(f"{elapsed:5.0f} s [{counts_line(study)}] killed worker {victim}", flush=True)
            fleet.start(victim)
            next_kill = time.monotonic() + args.kill_every * rng.uniform(0.75, 1.25)
        time.sleep(0.5)
    codes = {i: proc.returncode for i, proc in fleet.procs.items()}
    return kills, [f"worker {i} exited {code}" for i, code in codes.items() if code != 0]


def budget_met(study: optuna.Study, budget: int) -> bool:
    c = counts(study.get_trials(deepcopy=False))
    return c["COMPLETE"] + c["PRUNED"] >= budget


def wait_until_running(study: optuna.Study, deadline: float) -> None:
    while time.monotonic() < deadline and not study.get_trials(states=(TrialState.RUNNING,)):
        time.sleep(0.5)


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    return {s.name: sum(t.state == s for t in trials) for s in TrialState}


def counts_line(study: optuna.Study) -> str:
    c = counts(study.get_trials(deepcopy=False))
    return " ".join(f"{name} {n}" for name, n in c.items() if n)


def ended_by_objective(trial: FrozenTrial) -> bool:
    """A FAIL the objective chose (out of memory, diverged, artifacts, budget met); any
    other FAIL died with its worker, even after setting "completed" (killed while its
    plots were being drawn)."""
    return str(trial.user_attrs.get("end_reason", "")).startswith(("failed:", "not run:"))


def is_retry(trial: FrozenTrial) -> bool:
    return bool(trial.system_attrs.get("retry_history"))


def check(trials: list[FrozenTrial], budget: int) -> tuple[dict[str, int], list[str]]:
    """The soak's invariants; returns the figures to print and the violations."""
    c, problems = counts(trials), []
    finished = c["COMPLETE"] + c["PRUNED"]
    if finished != budget:
        problems.append(f"{finished} finished trials, budget {budget}")
    if c["RUNNING"] or c["WAITING"]:
        problems.append(f"{c['RUNNING']} RUNNING and {c['WAITING']} WAITING at the end")
    numbers = sorted(t.number for t in trials)
    if numbers != list(range(len(trials))):
        problems.append("trial numbers are not unique and consecutive")
    # RetryHeartbeatStaleTrialCallback: the last entry of a retry's history is its original.
    retry = {t.system_attrs["retry_history"][-1]: t for t in trials if is_retry(t)}
    killed = [t for t in trials if t.state == TrialState.FAIL and not ended_by_objective(t)]
    for trial in killed:
        if trial.number not in retry:
            problems.append(f"killed trial {trial.number} was not retried")
        elif not keeps_params(retry[trial.number], trial):
            again = retry[trial.number]
            problems.append(
                f"the retry of trial {trial.number} has other parameters: "
                f"{again.params} (trial {again.number}) vs {trial.params}"
            )
    for trial in (t for t in trials if t.state == TrialState.FAIL):
        by = retry.get(trial.number)
        why = trial.user_attrs.get("end_reason", "-")
        print(f"  FAIL trial {trial.number}: {why}; retried by {by.number if by else None}")
    figures = {**c, "killed trials": len(killed), "retries": len(retry)}
    return figures, problems


def keeps_params(retry: FrozenTrial, killed: FrozenTrial) -> bool:
    """The retry runs with every parameter the killed trial had chosen. A worker killed
    while the sampler was still choosing leaves only some (or none): the retry samples
    the others afresh."""
    return {name: retry.params.get(name) for name in killed.params} == killed.params


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="focaltune-soak-"))
    started = time.monotonic()
    config = prepare(work, args.data, args.trials)
    with LocalPostgres(work / "pg") as server:
        url = server.create_database(STUDY)
        storage = open_storage(url, heartbeat_interval=None)
        study = create_study(load_study_config(config), storage)
        fleet = Fleet(url, work)
        try:
            for index in range(args.workers):
                fleet.start(index)
            kills, problems = run(fleet, study, args)
        finally:
            fleet.stop_all()
        figures, violations = check(study.get_trials(), args.trials)
        storage.engine.dispose()
    minutes = (time.monotonic() - started) / 60
    print(f"soak: {args.workers} workers, budget {args.trials}, {kills} kills, {minutes:.1f} min")
    print("  " + ", ".join(f"{name} {n}" for name, n in figures.items()))
    for problem in problems + violations:
        print(f"  VIOLATION: {problem}")
    failed = bool(problems + violations)
    if failed or args.keep:
        print(f"  worker logs and artifacts kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print("soak: " + ("FAILED" if failed else "OK: nothing lost"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
