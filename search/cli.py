"""`focaltune` command line: one sub-command per module, exit codes 0 / 1 / 2.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a ``run(args) -> int``. Whatever goes wrong surfaces here as one line on
stderr: bad input (a bad flag too) exits 2, anything else 1. A traceback is shown only with
``--debug``, and it is printed here, through the secret masker, like every other line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from typing import NoReturn

import optuna

from storage.errors import BadStorage, StorageUnreachable
from storage.secrets import install_secret_filter, mask_secrets, remember_url
from storage.url import ENV_VAR
from trainer.errors import BadInput

PREFIX = "focaltune: error: "
MAX_LINE = 1000  # characters of an error line; longer ones lose their middle

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


def one_line(text: str) -> str:
    """``text`` masked, on one line, at most MAX_LINE characters (the fix at its end kept)."""
    text = " ".join(mask_secrets(text).split())
    if len(text) <= MAX_LINE:
        return text
    half = MAX_LINE // 2 - 3
    return f"{text[:half]} ... {text[-half:]}"


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage block) naming the command's --help."""

    def error(self, message: str) -> NoReturn:
        print(PREFIX + one_line(f"{message}; see `{self.prog} --help`"), file=sys.stderr)
        self.exit(2)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = Parser(
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


def mask_everything_printed() -> None:
    """Route what Python itself prints (uncaught tracebacks, thread deaths, warnings)
    through the masker too: the log filter covers only the logging module."""
    show_warning = warnings.formatwarning
    warnings.formatwarning = lambda *a, **k: mask_secrets(show_warning(*a, **k))

    def excepthook(kind, value, tb) -> None:  # noqa: ANN001 (sys.excepthook's signature)
        sys.stderr.write(mask_secrets("".join(traceback.format_exception(kind, value, tb))))

    sys.excepthook = excepthook
    threading.excepthook = lambda a: excepthook(a.exc_type, a.exc_value, a.exc_traceback)


def report(err: BaseException, debug: bool) -> int:
    """The error as one masked line (after the masked traceback with --debug); exit code."""
    if debug:
        sys.stderr.write(mask_secrets("".join(traceback.format_exception(err))))
    if isinstance(err, BadInput | BadStorage):
        print(PREFIX + one_line(str(err)), file=sys.stderr)
        return 2
    if isinstance(err, StorageUnreachable):
        print(PREFIX + one_line(f"{err}; is the database server up?"), file=sys.stderr)
        return 1
    hint = "" if debug else "; run with --debug for the traceback"
    message = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    print(PREFIX + one_line(f"{message}{hint}"), file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Passwords are known before anything can fail, so even a bad flag's line is masked.
    for url in [os.environ.get(ENV_VAR, ""), *(a for a in argv if "://" in a)]:
        remember_url(url)
    mask_everything_printed()
    debug = "--debug" in argv  # known before parsing: importing a command can fail too
    try:
        args = build_parser(argv).parse_args(argv)
        configure_logging(args.verbose)
        install_secret_filter()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("focaltune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every failure ends as one line; SystemExit passes through
        return report(err, debug)


if __name__ == "__main__":
    sys.exit(main())
