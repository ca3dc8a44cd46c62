"""`make scale`: many workers against one PostgreSQL, directly and through PgBouncer.

An orchestration benchmark, not a training one: every worker is the real worker loop
(``search.worker.run_worker``: stale-trial repair, the exact budget, heartbeats, the
pruner) with a synthetic objective (``benchmarks/scale_worker.py``: sleeps a drawn 5–15 s,
reports 4 times). One local PostgreSQL with ``max_connections = 50``; PgBouncer in
transaction mode with 20 server connections in front of it. For N = 8, 32 and 128 worker
processes and each path, once undisturbed and once with 10 % of the workers killed with
``kill -9`` at random moments (each while it runs a trial), it measures:

- trials/s (COMPLETE + PRUNED over the time from the first trial's start to the last's end);
- p50/p99 of the gap between a worker's trials (stale check, counts and Optuna's ``ask``),
  of a report (+ ``should_prune``) and of ``tell``;
- the most server connections in use (``pg_stat_activity``) and memory per worker (PSS);
- the busy fraction of each worker that ran to the end (seconds in the objective's sleep
  over the time from its first trial's start to its last trial's end);
- workers refused (exit 2) and every other error, the budget, RUNNING trials at the end and
  whether each killed trial was retried exactly once.

    .venv/bin/python benchmarks/scale.py [--sizes 8 32 128] [--out runs/scale.json]

Heartbeats every 5 s and a 15 s grace period (the product's default is 20/60 s;
``--heartbeat``/``--grace``) keep the runs with kills short; both paths use the same.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import psycopg
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the product's packages sit beside benchmarks/

from search.config import SCHEMA_VERSION, parse_study_config  # noqa: E402
from search.study import CONFIG_ATTR, SCHEMA_ATTR  # noqa: E402
from storage import open_storage  # noqa: E402
from tools.pgbouncer import LocalPgBouncer  # noqa: E402
from tools.postgres import LocalPostgres, free_port  # noqa: E402

MAX_CONNECTIONS = 50
POOL_SIZE = 20


@dataclass
class ScaleRun:
    path: str
    workers: int
    kills: int
    budget: int
    seconds: float = 0.0
    complete: int = 0
    pruned: int = 0
    running_at_end: int = 0
    killed_trials: int = 0
    killed_retried_once: int = 0
    trials_per_second: float = 0.0
    gap_p50: float = 0.0
    gap_p99: float = 0.0
    report_p50: float = 0.0
    report_p99: float = 0.0
    tell_p50: float = 0.0
    tell_p99: float = 0.0
    busy_mean: float = 0.0
    busy_min: float = 0.0
    cpu_per_trial: float = 0.0  # CPU seconds a worker process uses per trial
    server_connections_max: int = 0
    pss_mb_per_worker: float = 0.0
    refused: int = 0  # workers that exited 2: the server's connection limit
    capped: bool = False  # stopped at --minutes before the budget was met
    startup_s: float = 0.0  # from launch until every worker that ran had started a trial
    errors: list[str] = field(default_factory=list)  # any other failed worker's last line

    @property
    def budget_exact(self) -> bool:
        return self.complete + self.pruned == self.budget


def study_config(name: str, budget: int, heartbeat: int, grace: int) -> dict:
    """A study of the product's space; its data and backbone are never read."""
    raw = {
        "study": {
            "name": name,
            "n_trials": budget,
            "heartbeat_interval": heartbeat,
            "grace_period": grace,
            "max_retry": 3,
        },
        "data": {"train": "synthetic.csv", "labels": ["0", "1", "2", "3"]},
        "model": {"name_or_path": "synthetic"},
        "train": {"evals_per_epoch": 2},
        "space": {"focal_alpha": [0.25, 4.0], "epochs": [1, 2]},
    }
    return parse_study_config(raw, "scale").model_dump(mode="json")


def create(url: str, name: str, budget: int, heartbeat: int, grace: int) -> None:
    storage = open_storage(url, heartbeat_interval=None)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(CONFIG_ATTR, study_config(name, budget, heartbeat, grace))
    study.set_user_attr(SCHEMA_ATTR, SCHEMA_VERSION)
    storage.engine.dispose()


class Watcher(threading.Thread):
    """Samples server connections every half second and the workers' memory every 10 s.

    It connects before the workers start: a direct run fills the server, which would then
    refuse it (every client here is a superuser, so reserved slots do not help)."""

    def __init__(self, server: LocalPostgres, procs: list[subprocess.Popen]):
        super().__init__(daemon=True)
        self.server, self.procs = server, procs
        self.connections, self.pss_mb = 0, 0.0
        self.done = threading.Event()
        self.connection = psycopg.connect(server.url("postgres").replace("+psycopg", ""))
        self.connection.autocommit = True

    def run(self) -> None:
        query = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        with self.connection as connection:
            for tick in itertools.count():
                if self.done.is_set():
                    break
                self.connections = max(self.connections, connection.execute(query).fetchone()[0])
                alive = [p.pid for p in self.procs if p.poll() is None]
                if alive and tick % 20 == 10:  # reading 128 smaps costs CPU: every 10 s
                    self.pss_mb = max(self.pss_mb, sum(map(pss_mb, alive)) / len(alive))
                self.done.wait(0.5)


def pss_mb(pid: int) -> float:
    """Proportional set size of ``pid`` in MB: shared library pages split between users."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


ORDER = ("direct", "pgbouncer", "grpc")


@contextlib.contextmanager
def grpc_proxy(url: str) -> Iterator[str]:
    """Optuna's gRPC proxy for ``url`` in its own process; yields grpc://127.0.0.1:PORT."""
    port = free_port()
    env = dict(os.environ, FOCALTUNE_STORAGE=url)
    command = [sys.executable, "-m", "benchmarks.grpc_peer", "proxy", "--port", str(port)]
    proxy = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            if proxy.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gRPC proxy did not start")
            time.sleep(0.2)
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def entry(server: LocalPostgres, path: str, pool_size: int) -> Iterator[str]:
    """The URL workers of ``path`` use. A pooler or proxy starts afresh for each run: an
    earlier run's would keep its idle server connections, which a direct run then lacks."""
    if path == "direct":
        yield server.url()
    elif path == "pgbouncer":
        with LocalPgBouncer(server, pool_size=pool_size) as pooler:
            yield pooler.url()
    else:
        with grpc_proxy(server.url()) as url:
            yield url


def run_once(
    server: LocalPostgres,
    path: str,
    n: int,
    kill: bool,
    args: argparse.Namespace,
    pool_size: int = POOL_SIZE,
) -> ScaleRun:
    name = f"scale-{path}-{n}-{'kill' if kill else 'calm'}"
    budget = args.trials_per_worker * n
    create(server.url(), name, budget, args.heartbeat, args.grace)
    with entry(server, path, pool_size) as url:
        return run_workers(server, url, path, n, kill, args, name, budget)


def run_workers(
    server: LocalPostgres,
    url: str,
    path: str,
    n: int,
    kill: bool,
    args: argparse.Namespace,
    name: str,
    budget: int,
) -> ScaleRun:
    work = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    env = dict(os.environ, FOCALTUNE_STORAGE=url, OMP_NUM_THREADS="1")
    procs, logs = [], []
    watcher = Watcher(server, procs)  # connected before the workers: see Watcher
    started, launched = time.monotonic(), time.time()
    for i in range(n):
        logs.append(work / f"w{i}.jsonl")
        command = [sys.executable, "-m", "benchmarks.scale_worker", "--study", name]
        if path == "grpc":  # url: grpc://127.0.0.1:PORT
            command = [sys.executable, "-m", "benchmarks.grpc_peer", "worker", "--study", name]
            command += ["--port", url.rsplit(":", 1)[1], "--trials", str(args.trials_per_worker)]
        command += ["--log", str(logs[i]), "--worker-index", str(i)]
        command += ["--low", str(args.low), "--high", str(args.high)]
        stderr = (work / f"w{i}.err").open("w")
        procs.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        )
    watcher.start()
    killed = kill_some(procs, logs, round(args.kill_fraction * n) if kill else 0, args)
    capped = wait_or_stop(procs, logs, started, args)
    watcher.done.set()
    watcher.join()
    result = ScaleRun(path, n, len(killed), budget, seconds=round(time.monotonic() - started, 1))
    result.capped = capped
    result.server_connections_max = watcher.connections
    result.pss_mb_per_worker = round(watcher.pss_mb, 1)
    for i, proc in enumerate(procs):
        if i in killed:
            continue
        last = (work / f"w{i}.err").read_text().strip().splitlines()[-1:] or [""]
        if proc.returncode == 2:  # refused: the one line names the limit and the fix
            result.refused += 1
            result.errors.append(last[0]) if len(result.errors) < 1 else None
        elif proc.returncode not in (0, -15, 143):  # 143/-15: stopped at --minutes
            result.errors.append(f"exit {proc.returncode}: {last[0]}")
    measure(result, server.url(), name, logs, killed)
    firsts = [json.loads(log.read_text().splitlines()[0])["start"] for log in logs if log.exists()]
    result.startup_s = round(max(firsts) - launched, 1) if firsts else 0.0
    if result.errors:  # the workers' logs and stderr explain them: kept
        print(f"{name}: worker logs kept in {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return result


def wait_or_stop(
    procs: list[subprocess.Popen], logs: list[Path], started: float, args: argparse.Namespace
) -> bool:
    """Wait for the workers: up to --startup-minutes for a first trial to start, then up to
    --minutes; then stop the rest with SIGTERM (each fails and re-enqueues its trial).
    Whether any had to be stopped."""
    deadline, first = started + args.startup_minutes * 60, None
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if first is None and any(in_trial(log) or log.exists() for log in logs):
            first = time.monotonic()
            deadline = first + args.minutes * 60
        time.sleep(0.5)
    alive = [p for p in procs if p.poll() is None]
    for proc in alive:
        proc.terminate()
    for proc in alive:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return bool(alive)


def in_trial(log: Path) -> bool:
    """Whether the worker writing ``log`` is inside its objective (its marker file exists)."""
    return log.with_name(log.name + ".current").exists()


def kill_some(
    procs: list[subprocess.Popen], logs: list[Path], k: int, args: argparse.Namespace
) -> set[int]:
    """Kill ``k`` random workers, each while it runs a trial, at random moments."""
    rng = random.Random(args.seed)
    expected = args.trials_per_worker * (args.low + args.high) / 2
    moments = sorted(rng.uniform(0.2 * expected, 0.7 * expected) for _ in range(k))
    killed: set[int] = set()
    first, give_up = None, time.monotonic() + args.startup_minutes * 60
    while len(killed) < k and any(p.poll() is None for p in procs):
        if first is None:  # the clock starts when the first trial has finished
            if any(log.exists() for log in logs):
                first = time.monotonic()
            elif time.monotonic() > give_up:
                break  # no trial ever finished: wait_or_stop stops the workers
            time.sleep(0.2)
            continue
        if time.monotonic() - first < moments[len(killed)]:
            time.sleep(0.1)
            continue
        marked = [in_trial(log) for log in logs]
        busy = [
            i for i, p in enumerate(procs) if p.poll() is None and marked[i] and i not in killed
        ]
        if not busy:
            time.sleep(0.05)
            continue
        victim = rng.choice(busy)
        procs[victim].kill()
        killed.add(victim)
    return killed


def measure(result: ScaleRun, url: str, name: str, logs: list[Path], killed: set[int]) -> None:
    storage = open_storage(url, heartbeat_interval=None)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    storage.engine.dispose()
    result.complete = sum(t.state == TrialState.COMPLETE for t in trials)
    result.pruned = sum(t.state == TrialState.PRUNED for t in trials)
    result.running_at_end = sum(t.state == TrialState.RUNNING for t in trials)
    # A killed trial ended FAIL without the attributes every finished objective writes.
    dead = [t for t in trials if t.state == TrialState.FAIL and "end_reason" not in t.user_attrs]
    retries = [t.system_attrs.get("retry_history", [None])[-1] for t in trials]
    result.killed_trials = len(dead)
    result.killed_retried_once = sum(retries.count(t.number) == 1 for t in dead)
    lines = [
        json.loads(x)
        for i, log in enumerate(logs)
        if log.exists()
        for x in log.read_text().splitlines()
    ]
    if not lines:
        return
    span = max(x["end"] for x in lines) - min(x["start"] for x in lines)
    result.trials_per_second = round((result.complete + result.pruned) / span, 2)
    cpu = [x["cpu"] for x in lines if "cpu" in x]
    result.cpu_per_trial = round(statistics.mean(cpu), 3) if cpu else 0.0
    for key, values in (
        ("gap", [x["gap"] for x in lines if x["gap"] is not None]),
        ("report", [r for x in lines for r in x["reports"]]),
        ("tell", [x["tell"] for x in lines if "tell" in x]),
    ):
        setattr(result, f"{key}_p50", round(percentile(values, 50), 4))
        setattr(result, f"{key}_p99", round(percentile(values, 99), 4))
    busy = []
    for i, log in enumerate(logs):
        mine = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        if i in killed or len(mine) < 2:
            continue
        busy.append(sum(x["slept"] for x in mine) / (mine[-1]["end"] - mine[0]["start"]))
    if busy:
        result.busy_mean, result.busy_min = round(statistics.mean(busy), 4), round(min(busy), 4)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def table(runs: list[ScaleRun]) -> str:
    head = (
        "| path | workers | killed | start-up s | trials/s | gap p50/p99 s | report p50/p99 s | "
        "tell p50/p99 s | busy mean/min | CPU s/trial | server conns max | PSS MB/worker | "
        "refused | budget exact | RUNNING at end | killed trials retried once |\n"
        + "|---" * 16
        + "|"
    )
    rows = [
        f"| {r.path} | {r.workers} | {r.kills} | {r.startup_s:.0f} | {r.trials_per_second:.2f} | "
        f"{r.gap_p50:.3f}/{r.gap_p99:.3f} | {r.report_p50:.3f}/{r.report_p99:.3f} | "
        f"{r.tell_p50:.3f}/{r.tell_p99:.3f} | {r.busy_mean:.3f}/{r.busy_min:.3f} | "
        f"{r.cpu_per_trial:.2f} | {r.server_connections_max} | {r.pss_mb_per_worker:.0f} | "
        f"{r.refused} | {'yes' if r.budget_exact else 'NO'} ({r.complete + r.pruned}/"
        f"{r.budget}{', capped' if r.capped else ''}) | "
        f"{r.running_at_end} | {r.killed_retried_once}/{r.killed_trials} |"
        for r in runs
    ]
    return "\n".join([head, *rows])


def plot(runs: list[ScaleRun], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for path, style in (("direct", "o-"), ("pgbouncer", "s-"), ("grpc", "^-")):
        calm = [r for r in runs if r.path == path and not r.kills]
        sizes = [r.workers for r in calm]
        axes[0].plot(sizes, [r.trials_per_second for r in calm], style, label=path)
        axes[1].plot(sizes, [r.tell_p99 for r in calm], style, label=path)
        axes[2].plot(sizes, [r.server_connections_max for r in calm], style, label=path)
    axes[2].axhline(MAX_CONNECTIONS, color="grey", ls=":", label="max_connections")
    titles = ("trials/s", "tell p99 (s)", "server connections (max)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("worker processes")
        ax.set_title(title)
        ax.legend()
    fig.suptitle("make scale: synthetic 5-15 s trials, PostgreSQL max_connections = 50")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--paths", nargs="+", default=list(ORDER))
    parser.add_argument("--trials-per-worker", type=int, default=4)
    parser.add_argument("--low", type=float, default=5.0, help="shortest trial, s (5)")
    parser.add_argument("--high", type=float, default=15.0, help="longest trial, s (15)")
    parser.add_argument("--kill-fraction", type=float, default=0.1)
    parser.add_argument(
        "--kills",
        choices=("both", "none", "only"),
        default="both",
        help="runs without kills, then with them (both); without only (none); with only (only)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=3.0,
        help="stop a run's workers this long after its first trial started (3)",
    )
    parser.add_argument(
        "--startup-minutes", type=float, default=10.0, help="... or if no trial starts (10)"
    )
    parser.add_argument("--heartbeat", type=int, default=5, help="seconds (the product: 20)")
    parser.add_argument("--grace", type=int, default=15, help="seconds (the product: 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scale.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "scale.png")
    parser.add_argument(
        "--merge", type=Path, help="an earlier --out file whose runs join this one's"
    )
    return parser.parse_args(argv)


def save(runs: list[ScaleRun], args: argparse.Namespace) -> list[ScaleRun]:
    """Write ``runs`` with those of --merge to --out, in table order; returns them all."""
    earlier = [ScaleRun(**r) for r in json.loads(args.merge.read_text())] if args.merge else []
    every = sorted(earlier + runs, key=lambda r: (r.kills > 0, r.workers, ORDER.index(r.path)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in every], indent=1))
    return every


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs: list[ScaleRun] = []
    root = Path(tempfile.mkdtemp(prefix="focaltune-scale-"))
    settings = {"max_connections": str(MAX_CONNECTIONS)}
    try:
        with LocalPostgres(root, settings=settings) as server:
            for kill in {"both": (False, True), "none": (False,), "only": (True,)}[args.kills]:
                for n in args.sizes:
                    for path in args.paths:
                        runs.append(run_once(server, path, n, kill, args))
                        print(table(runs[-1:]).splitlines()[-1], flush=True)
                        save(runs, args)  # after each run: a long benchmark keeps what it has
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the server's data folder
    runs = save(runs, args)
    print(table(runs))
    if any(not r.kills for r in runs):  # the plot shows the runs without kills
        plot(runs, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
