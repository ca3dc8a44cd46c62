"""`focaltune` command line: one sub-command per module, exit codes 0 / 1 / 2.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a ``run(args) -> int``. Bad input of any kind surfaces here as one line on
stderr and exit 2; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from storage.errors import BadStorage
from storage.secrets import install_secret_filter, mask_secrets
from trainer.errors import BadInput

COMMANDS = (
    "search.commands.study",
    "search.commands.train",
    "search.commands.worker",
    "search.commands.launch",
    "search.commands.status",
    "search.commands.export",
    "search.commands.final",
    "search.commands.predict",
    "search.commands.backbone",
    "search.commands.dashboard",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focaltune",
        description="Hyperparameter search for focal-loss text classifiers, built on Optuna.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # command not built yet
        module.register(subparsers)
    return parser


def configure_logging() -> None:
    """Progress (INFO) to stdout, problems (WARNING and up) to stderr, so that a failed
    command's stderr is just its one-line error."""
    fmt = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(fmt)
    logging.basicConfig(level=logging.INFO, handlers=[out, err], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    install_secret_filter()
    try:
        return int(args.func(args) or 0)
    except (BadInput, BadStorage) as err:
        if args.debug:
            raise
        print(f"focaltune: error: {mask_secrets(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("focaltune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
