"""Errors raised by the storage package; the CLI prints them on one line (exit 2, or 1)."""

from __future__ import annotations


class BadStorage(ValueError):
    """Bad storage input (malformed URL, unreachable server, wrong password, read-only file).

    The message is one line: what went wrong, where (the URL with its password masked) and
    how to fix it.
    """


class StorageUnreachable(RuntimeError):
    """A database that worked went away for longer than the outage limit (exit 1: not the
    user's input, but the service failing)."""
