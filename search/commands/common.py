"""Arguments shared by the commands that talk to a study."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from search.config import StudyConfig
from search.files import check_output
from storage import resolve_url, sqlite_path


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


def _number_in(kind: type, name: str, low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` in [low, high]; a bad value is one line naming
    the flag (never inf or nan, which float() accepts)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is not {name} in {low}..{high}")
        return value

    return parse


def int_in(low: int, high: int) -> Callable[[str], int]:
    return _number_in(int, "an integer", low, high)


def float_in(low: float, high: float) -> Callable[[str], float]:
    return _number_in(float, "a finite number", low, high)


def check_database(url: str, config: str, cfg: StudyConfig) -> None:
    """A SQLite database must not be the config or a data file (nor lie in a folder input)."""
    from search.study import data_inputs

    path = sqlite_path(url)
    if path is not None:
        inputs = [("the config", config), *data_inputs(cfg.data)]
        # Not probed: opening the database checks its folder, with a message of its own.
        check_output(path, "the storage URL", inputs, probe=False)
