"""Errors raised by the storage package; the CLI prints them on one line and exits 2."""

from __future__ import annotations


class BadStorage(ValueError):
    """Bad storage input (malformed URL, unreachable server, wrong password, read-only file).

    The message is one line: what went wrong, where (the URL with its password masked) and
    how to fix it.
    """
