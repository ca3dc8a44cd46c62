"""Keep database passwords out of messages and logs.

Storage URLs carry passwords (``postgresql+psycopg://user:PASSWORD@host/db`` or
``...?password=PASSWORD``), and they travel through error messages, tracebacks and the log
lines of SQLAlchemy, Optuna and the database driver. Two mechanisms keep them out:

* URLs are masked by *parsing* their user info (up to the last ``@``), not by a pattern
  that stops at whitespace, so a password there with spaces, tabs or a raw ``@`` is masked
  whole; secret query keys (``?password=``) are masked up to the next ``&``, ``;``, ``#``
  or whitespace (a query password with a space is masked only up to it);
* every password seen in a storage URL is remembered (:func:`remember_url`), and
  :func:`mask_secrets` scrubs it from any text, wherever it appears: a driver that echoes
  the host part it failed to resolve echoes the rest of a password with a raw ``@``.

Everything user-visible goes through :func:`mask_secrets`, and :func:`install_secret_filter`
masks every log record before a handler writes it.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, quote_plus, unquote

MASK = "***"
# Query keys whose values are secrets (libpq's and the drivers' spellings).
SECRET_KEYS = ("password", "passwd", "pwd", "sslpassword", "token", "secret")
# Shorter remembered strings are not scrubbed from free text: a 2-letter password would
# blank out every word holding those letters. URLs are still masked by parsing.
MIN_SCRUB = 3
MIN_PIECE = 6

_SCHEME = "://"
# scheme://user:PASSWORD@ in free text, where a URL's end is unknown: the password runs to
# the *last* "@" before whitespace. A fallback for URLs never seen by remember_url.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<password>\S*)(?P<tail>@)"
)
# libpq key-value connection strings ("host=h password=secret", password='with spaces')
# and secret keys of a URL's query string.
_KEY_VALUE_PASSWORD = re.compile(
    rf"(?P<head>\b(?:{'|'.join(SECRET_KEYS)})\s*=\s*)(?P<password>'[^']*'|[^\s&;#]+)", re.I
)
_known: set[str] = set()


def _userinfo_password(url: str) -> tuple[int, int] | None:
    """Start and end of the password in ``url`` (user info runs to the last "@"), if any."""
    start = url.find(_SCHEME)
    if start < 0:
        return None
    start += len(_SCHEME)
    at = url.rfind("@", start)
    colon = url.find(":", start, at) if at >= 0 else -1
    if colon < 0 or colon + 1 == at:
        return None
    return colon + 1, at


def mask_url(url: str) -> str:
    """Return ``url`` with its password (user info and query) replaced by ``***``."""
    span = _userinfo_password(url)
    if span is not None:
        url = url[: span[0]] + MASK + url[span[1] :]
    return _KEY_VALUE_PASSWORD.sub(rf"\g<head>{MASK}", url)


def _secret_query_values(url: str) -> list[str]:
    return [m.group("password").strip("'") for m in _KEY_VALUE_PASSWORD.finditer(url)]


def remember(secret: str) -> None:
    """Scrub ``secret`` (and its URL-encoded and decoded forms) from every later message."""
    forms = {secret, unquote(secret), quote(secret, safe=""), quote_plus(secret)}
    _known.update(form for form in forms if len(form) >= MIN_SCRUB)
    # The pieces around a raw "@", which a driver quotes as a host name; only long ones,
    # or common words would be blanked out of every message.
    _known.update(piece for piece in unquote(secret).split("@") if len(piece) >= MIN_PIECE)


def remember_url(url: str) -> None:
    """Remember the password(s) of a storage URL; see :func:`remember`."""
    span = _userinfo_password(url)
    if span is not None:
        remember(url[span[0] : span[1]])
    for value in _secret_query_values(url):
        remember(value)


def mask_secrets(text: str) -> str:
    """Scrub every remembered password, then mask URL passwords and ``password=...`` pairs."""
    for secret in sorted(_known, key=len, reverse=True):  # longest first: no piece left over
        text = text.replace(secret, MASK)
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
