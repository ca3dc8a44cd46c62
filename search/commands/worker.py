"""`focaltune worker --storage URL --study NAME`: run trials until the budget is met."""

from __future__ import annotations

import argparse
import gc
import os

from search.commands.common import add_storage_args, float_in, int_in, storage_url
from search.worker import run_worker


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run trials of a study until its budget is met",
        description="Load a study by storage URL and name (its config is stored in it) and "
        "run trials until the study's budget (COMPLETE + PRUNED over all workers), "
        "--n-trials or --timeout is reached. Start as many as you like, anywhere.",
    )
    add_storage_args(parser)
    parser.add_argument(
        "--n-trials", type=int_in(1, 10**9), default=None, help="at most N trials here"
    )
    parser.add_argument(
        "--timeout", type=float_in(0, 10**9), default=None, help="start no trial after S s"
    )
    parser.add_argument(
        "--worker-index",
        type=int_in(0, 10**9),
        default=None,
        help="distinct per worker (sampler seed offset); default: from the process id",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    index = args.worker_index if args.worker_index is not None else os.getpid()
    # torch and transformers, imported by now, leave ~500k long-lived objects that every
    # full collection scans, and the objective collects after each trial: frozen, they are
    # skipped (issue 6: 1.3-1.8 s of collection per trial on CPU fell to ~0.1 s).
    gc.freeze()
    summary = run_worker(
        storage_url(args),
        args.study,
        worker_index=index,
        n_trials=args.n_trials,
        timeout=args.timeout,
    )
    print(f"worker done: {summary.trials_run} trials, stopped by {summary.stopped_by}", flush=True)
    if summary.stopped_by == "signal":
        # Exit within the grace period: the interpreter's last full garbage collection of
        # torch/transformers objects alone took ~10 s on a busy machine.
        gc.freeze()  # again: what the trials made since is not frozen yet
        return 143
    return 0
