"""`focaltune dashboard --storage URL [--host 127.0.0.1 --port 8080] [--artifacts DIR]`."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from search.commands.common import add_storage_args, int_in, storage_url


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="optuna-dashboard for a storage, with the studies' trial artifacts",
        description="Serve optuna-dashboard for every study in the storage, with each "
        "study's artifacts (confusion matrix, class distribution) attached. It has no "
        "authentication and can delete studies: it listens on 127.0.0.1 unless --host says "
        "otherwise (reach it from elsewhere with an SSH tunnel).",
    )
    add_storage_args(parser, study=False)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=int_in(0, 65535), default=8080, help="port (8080; 0 = a free one)"
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="artifact folder to serve; default: each study's own (tracking.artifacts, "
        "else <db stem>-artifacts beside the SQLite file)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from search.dashboard import serve  # pandas and optuna-dashboard: only when serving

    echo = partial(print, flush=True)
    warn = partial(print, file=sys.stderr, flush=True)
    try:
        serve(storage_url(args), args.host, args.port, args.artifacts, echo=echo, warn=warn)
    except KeyboardInterrupt:
        echo("dashboard stopped")
    return 0
