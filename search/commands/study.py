"""`focaltune study create CONFIG.yaml`: validate, create (idempotent), store the config."""

from __future__ import annotations

import argparse

from search.commands.common import check_database, int_in, storage_url
from search.config import load_study_config
from search.study import create_study, load_existing
from search.warm import best_params
from storage import describe
from storage.secrets import remember_url
from trainer.errors import BadInput


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("study", help="create studies")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="validate the config and create the study (idempotent)",
        description="Validate CONFIG.yaml and its data, then create the study and store the "
        "whole config in it. Creating again with the same config does nothing; with a "
        "different config it is refused.",
    )
    create.add_argument("config", help="study config YAML")
    create.add_argument(
        "--storage", default=None, help="storage URL (overrides $FOCALTUNE_STORAGE and the config)"
    )
    create.add_argument(
        "--warm-start",
        metavar="STUDY",
        help="enqueue the best configurations of this earlier study first (a new backbone "
        "or new data, same problem); values outside this space are clipped, with a warning",
    )
    create.add_argument(
        "--warm-start-storage",
        metavar="URL",
        help="storage of the --warm-start study (default: this study's storage)",
    )
    create.add_argument(
        "--warm-start-top", type=int_in(1, 1000), default=3, help="how many (default 3)"
    )
    create.set_defaults(func=run_create)


def run_create(args: argparse.Namespace) -> int:
    cfg = load_study_config(args.config)
    url = storage_url(args, cfg.study.storage)
    check_database(url, args.config, cfg)
    warm = None
    if args.warm_start:
        source = args.warm_start_storage or url
        remember_url(source)  # masked in every line printed from here on
        try:
            old = load_existing(source, args.warm_start)
        except BadInput as err:
            raise BadInput(f"--warm-start: {err}") from None
        warm = best_params(old, args.warm_start_top)
    study = create_study(cfg, url, warm)
    print(f"study {study.study_name} ready in {describe(url)} ({len(study.trials)} trials)")
    return 0
