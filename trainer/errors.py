"""The one error type for bad user input; the CLI prints it on one line and exits 2."""

from __future__ import annotations


class BadInput(ValueError):
    """Bad input from the user: the message says what, where and how to fix it."""
