"""The one error type for bad user input; the CLI prints it on one line and exits 2."""

from __future__ import annotations


class BadInput(ValueError):
    """Bad input from the user: the message says what, where and how to fix it."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first non-blank line of an error's message (its type when it has none), cut to
    ``limit``: enough to quote a library's error inside one line of our own."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:limit]
