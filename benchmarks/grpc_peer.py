"""The other connection-bounded path `make scale` measures: Optuna's gRPC storage proxy,
run as its documentation shows (not the product's path; see the README's "Why not Optuna's
gRPC storage proxy").

    python -m benchmarks.grpc_peer proxy --port P          # FOCALTUNE_STORAGE: the database
    python -m benchmarks.grpc_peer worker --port P --study NAME --log FILE --trials K

The proxy serves ``optuna.storages.get_storage(URL)`` (its default pool and 10 threads).
A worker loads the study through ``GrpcStorageProxy`` with the product's sampler and pruner
and runs K trials of the same synthetic objective as ``benchmarks/scale_worker.py``, with
``study.optimize``: its users' loop, which has no budget rule and no heartbeats (the proxy
offers none), so a trial killed with ``kill -9`` stays RUNNING.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import optuna

from benchmarks.scale_worker import SyntheticRunner
from search.study import make_pruner, make_sampler, stored_config


def serve(port: int) -> None:
    storage = optuna.storages.get_storage(os.environ["FOCALTUNE_STORAGE"])
    optuna.storages.run_grpc_proxy_server(storage, host="127.0.0.1", port=port)


def work(args: argparse.Namespace) -> None:
    storage = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=args.port)
    storage.wait_server_ready(timeout=120)
    cfg = stored_config(optuna.load_study(study_name=args.study, storage=storage))
    study = optuna.load_study(
        study_name=args.study,
        storage=storage,
        sampler=make_sampler(cfg, args.worker_index),
        pruner=make_pruner(cfg),
    )
    runner = SyntheticRunner(args.low, args.high, args.log, seed=args.worker_index)
    for _ in range(args.trials):
        study.optimize(lambda trial: runner.objective(trial, cfg), n_trials=1)
        runner.after_trial()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_peer")
    parser.add_argument("role", choices=["proxy", "worker"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--study")
    parser.add_argument("--log", type=Path)
    parser.add_argument("--worker-index", type=int, default=0)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--low", type=float, default=5.0)
    parser.add_argument("--high", type=float, default=15.0)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.role == "proxy":
        serve(args.port)
    else:
        work(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
