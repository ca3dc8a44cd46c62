"""Keep database passwords out of messages and logs.

Storage URLs carry passwords (``postgresql+psycopg://user:PASSWORD@host/db``), and they
travel through error messages, tracebacks and the log lines of SQLAlchemy and Optuna.
Everything user-visible goes through :func:`mask_secrets`, and :func:`install_secret_filter`
masks every log record before a handler writes it.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://user:PASSWORD@ — the password runs to the *last* "@" before whitespace, so a
# raw "@" inside a password is masked too (masking too much is harmless, too little is not).
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<password>\S*)(?P<tail>@)"
)
# libpq key-value connection strings: "host=h password=secret" or password='with spaces'.
_KEY_VALUE_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<password>'[^']*'|\S+)", re.I)


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``; everything else is kept."""
    return _URL_PASSWORD.sub(rf"\g<head>{MASK}\g<tail>", url)


def mask_secrets(text: str) -> str:
    """Mask every URL password and ``password=...`` pair in arbitrary text."""
    text = _URL_PASSWORD.sub(rf"\g<head>{MASK}\g<tail>", text)
    return _KEY_VALUE_PASSWORD.sub(rf"\g<head>{MASK}", text)


class SecretFilter(logging.Filter):
    """A handler filter that masks passwords in a record's message, args and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return True
        # Render the args into the message now, so no handler sees them unmasked.
        record.msg, record.args = mask_secrets(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


def install_secret_filter() -> SecretFilter:
    """Add one :class:`SecretFilter` to every handler of the root logger and other loggers.

    Handler filters see records propagated from child loggers (logger filters do not), and
    loggers that do not propagate (Optuna's own) are covered by visiting their handlers too.
    Call it after logging is configured; calling it again covers handlers added since.
    """
    secret_filter = SecretFilter()
    loggers = [logging.getLogger()]
    loggers += [
        logger
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, SecretFilter) for f in handler.filters):
                handler.addFilter(secret_filter)
    return secret_filter
