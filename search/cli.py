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

import optuna

from storage.errors import BadStorage, StorageUnreachable
from storage.secrets import install_secret_filter, mask_secrets
from trainer.errors import BadInput

# command name -> module; only the module of the command being run is imported, so a
# light command (status, export) does not pay for importing torch and transformers.
COMMANDS = {
    "study": "search.commands.study",
    "train": "search.commands.train",
    "worker": "search.commands.worker",
    "launch": "search.commands.launch",
    "status": "search.commands.status",
    "export": "search.commands.export",
    "final": "search.commands.final",
    "predict": "search.commands.predict",
    "backbone": "search.commands.backbone",
    "dashboard": "search.commands.dashboard",
}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focaltune",
        description="Hyperparameter search for focal-loss text classifiers, built on Optuna.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = [name for name in argv if name in COMMANDS][:1] or list(COMMANDS)
    for name in chosen:
        importlib.import_module(COMMANDS[name]).register(subparsers)
    return parser


def configure_logging(verbose: bool) -> None:
    """Logs go to stderr, warnings only unless --verbose: stdout stays clean for --json,
    and a failed command's stderr is just its one-line error."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    configure_logging(args.verbose)
    install_secret_filter()
    try:
        return int(args.func(args) or 0)
    except (BadInput, BadStorage) as err:
        if args.debug:
            raise
        print(f"focaltune: error: {mask_secrets(str(err))}", file=sys.stderr)
        return 2
    except StorageUnreachable as err:
        if args.debug:
            raise
        print(f"focaltune: error: {err}; is the database server up?", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("focaltune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
