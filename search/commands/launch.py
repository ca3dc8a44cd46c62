"""`focaltune launch CONFIG.yaml --workers N`: create if needed, then N local workers."""

from __future__ import annotations

import argparse

import optuna

from search.commands.common import check_database, int_in, storage_url
from search.config import load_study_config
from search.launch import launch
from search.status import print_status, study_status
from search.study import create_study
from storage import open_storage, warn_if_sqlite_crowded


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "launch",
        help="create the study if needed and run N local workers",
        description="Create the study (idempotent), start N worker processes (one GPU each "
        "when there are GPUs, CPU threads split otherwise), show progress, exit when the "
        "budget is met.",
    )
    parser.add_argument("config", help="study config YAML")
    parser.add_argument("--workers", type=int_in(1, 256), default=1, help="number of local workers")
    parser.add_argument("--storage", default=None, help="storage URL (overrides the config)")
    # Its own dest: a subcommand's default for `verbose` would overwrite the global -v.
    parser.add_argument(
        "--verbose", dest="relay_all", action="store_true", help="relay all worker output"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_study_config(args.config)
    url = storage_url(args, cfg.study.storage)
    check_database(url, args.config, cfg)
    warn_if_sqlite_crowded(url, args.workers)
    study = create_study(cfg, url)
    result = launch(
        url, study, cfg.study.n_trials, args.workers, verbose=args.relay_all or args.verbose
    )
    study = optuna.load_study(
        study_name=study.study_name, storage=open_storage(url, heartbeat_interval=None)
    )
    print_status(study_status(study, cfg.study.n_trials))
    print(f"launch finished in {result.seconds:.0f} s; worker exit codes {result.exit_codes}")
    return 0 if all(code == 0 for code in result.exit_codes) else 1
