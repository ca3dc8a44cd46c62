"""`focaltune status --storage URL --study NAME [--json]`."""

from __future__ import annotations

import argparse
import json

from search.commands.common import add_storage_args, storage_url
from search.status import print_status, study_status
from search.study import load_existing, stored_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="counts by state, best trial, running trials, top 5",
        description="Show a study: trials by state, the best so far, running trials with "
        "their last reported evaluation and age, and the top 5.",
    )
    add_storage_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    study = load_existing(storage_url(args), args.study)
    status = study_status(study, stored_config(study).study.n_trials)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print_status(status)
    return 0
