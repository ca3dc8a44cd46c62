"""One worker of ``benchmarks/scale.py``: the real worker loop with a synthetic objective.

It is an orchestration benchmark: each trial draws the product's parameters (``suggest``),
sleeps a drawn number of seconds in 4 parts, reporting after each and asking the pruner
(Hyperband, as shipped; its answer is not obeyed, so every trial lasts what it drew), and
writes its attributes in one transaction, as a training trial does. The training path is
not under test, and nothing here imports torch, so 128 of these fit in memory.

While a trial runs, the file ``--log`` + ``.current`` exists (so the benchmark kills workers
in a trial). Each trial appends one JSON line to ``--log`` (so a worker killed with
``kill -9`` keeps what it measured): when the objective started and ended, its seconds of
sleep, the gap since the previous trial ended (the loop's stale check and counts, and
Optuna's ``ask``), the seconds of each report (+ ``should_prune``) and of its ``tell``, and
the CPU seconds the process used since its previous line.

Run: ``python -m benchmarks.scale_worker --study NAME --log FILE`` with FOCALTUNE_STORAGE set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import optuna

from search.cli import configure_logging, report
from search.config import StudyConfig
from search.space import suggest
from search.worker import TrialRunner, run_worker
from storage.attrs import set_user_attrs

REPORTS = 4


class SyntheticRunner:
    """Trials that sleep ``low``–``high`` s; timings go to ``log``, a line per trial."""

    def __init__(self, low: float, high: float, log: Path, seed: int):
        self.low, self.high, self.log = low, high, log
        self.current = log.with_name(log.name + ".current")
        self.cpu = time.process_time()
        self.rng = random.Random(seed)
        self.ended: float | None = None  # perf_counter when the last objective returned
        self.finished: float | None = None  # ... and when run_trial returned
        self.pending: dict | None = None  # the last trial's line, written once told

    def __call__(self, cfg: StudyConfig, study: optuna.Study, url: str) -> TrialRunner:
        return TrialRunner(lambda trial: self.objective(trial, cfg), (), self.after_trial)

    def objective(self, trial: optuna.Trial, cfg: StudyConfig) -> float:
        start = time.perf_counter()
        gap = None if self.finished is None else start - self.finished
        suggest(trial, cfg)  # the product's parameters: the same sampler and storage work
        seconds = self.rng.uniform(self.low, self.high)
        reports, slept, value = [], 0.0, 0.0
        line = {"trial": trial.number, "gap": gap, "start": time.time(), "reports": reports}
        self.current.touch()
        try:
            for step in range(REPORTS):
                time.sleep(seconds / REPORTS)
                slept += seconds / REPORTS
                value = self.rng.random()
                t = time.perf_counter()
                trial.report(value, step)
                trial.should_prune()  # asked for its cost; obeyed, it would cut the trial short
                reports.append(time.perf_counter() - t)
            return value
        finally:
            t = time.perf_counter()
            set_user_attrs(trial, {"end_reason": "synthetic", "slept": round(slept, 3)})
            line |= {"attrs": time.perf_counter() - t, "slept": slept, "end": time.time()}
            self.pending, self.ended = line, time.perf_counter()
            self.current.unlink(missing_ok=True)

    def after_trial(self) -> None:
        self.finished = time.perf_counter()
        if self.pending is not None and self.ended is not None:
            self.pending["tell"] = self.finished - self.ended
            # CPU seconds of this process since the last line: its share of a busy machine.
            cpu, self.cpu = time.process_time() - self.cpu, time.process_time()
            self.pending["cpu"] = cpu
            with self.log.open("a") as file:
                file.write(json.dumps(self.pending) + "\n")
            self.pending = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_worker")
    parser.add_argument("--study", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--worker-index", type=int, default=0)
    parser.add_argument("--low", type=float, default=5.0)
    parser.add_argument("--high", type=float, default=15.0)
    args = parser.parse_args(argv)
    runner = SyntheticRunner(args.low, args.high, args.log, seed=args.worker_index)
    configure_logging(verbose=False)
    try:
        summary = run_worker(
            os.environ["FOCALTUNE_STORAGE"],
            args.study,
            worker_index=args.worker_index,
            make_runner=runner,
            echo=lambda _: None,
        )
    except Exception as err:  # one line and exit 2 for bad input, as `focaltune worker`
        return report(err, debug=False)
    print(f"worker done: {summary.trials_run} trials, stopped by {summary.stopped_by}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
