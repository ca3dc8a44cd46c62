"""Arguments shared by the commands that talk to a study."""

from __future__ import annotations

import argparse

from storage import resolve_url


def add_storage_args(parser: argparse.ArgumentParser, *, study: bool = True) -> None:
    parser.add_argument(
        "--storage",
        default=None,
        help="storage URL (sqlite:///file.db or postgresql+psycopg://user@host/db); "
        "default: $FOCALTUNE_STORAGE, then sqlite:///focaltune.db",
    )
    if study:
        parser.add_argument("--study", required=True, help="study name")


def storage_url(args: argparse.Namespace, config_value: str | None = None) -> str:
    return resolve_url(args.storage, config_value)
