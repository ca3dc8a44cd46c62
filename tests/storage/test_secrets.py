"""Passwords are masked in text, in URLs and in real log output."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from storage.secrets import SecretFilter, install_secret_filter, mask_secrets, mask_url

URL = "postgresql+psycopg://alice:s3cret@db.example:5432/studies?sslmode=require"


def test_mask_url_replaces_only_the_password() -> None:
    assert mask_url(URL) == "postgresql+psycopg://alice:***@db.example:5432/studies?sslmode=require"


@pytest.mark.parametrize(
    "url", ["sqlite:///runs/focaltune.db", "postgresql+psycopg://alice@db/x", "http://h:8080/p"]
)
def test_urls_without_password_are_unchanged(url: str) -> None:
    assert mask_url(url) == url
    assert mask_secrets(f"see {url} now") == f"see {url} now"


def test_url_encoded_and_raw_at_sign_passwords_are_masked() -> None:
    assert mask_url("postgresql://bob:p%40ss%2Fw0rd@h/db") == "postgresql://bob:***@h/db"
    assert "p@ss" not in mask_url("postgresql://bob:p@ss@h/db")


def test_every_url_in_text_is_masked() -> None:
    text = f"copy {URL} to mysql://root:hunter2@10.0.0.1/db, then 'redis://:tok3n@cache:6379'"
    masked = mask_secrets(text)
    for secret in ("s3cret", "hunter2", "tok3n"):
        assert secret not in masked
    assert masked.count("***") == 3
    assert "alice:***@db.example" in masked and "root:***@10.0.0.1" in masked


def test_key_value_passwords_are_masked() -> None:
    masked = mask_secrets("dsn: host=h password=s3cret dbname=x; password='two words'")
    assert "s3cret" not in masked and "two words" not in masked and "dbname=x" in masked


@pytest.fixture
def log_streams() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """A handler on the root logger and one on a non-propagating logger (as Optuna's)."""
    root_stream, own_stream = io.StringIO(), io.StringIO()
    root_handler, own_handler = (
        logging.StreamHandler(root_stream),
        logging.StreamHandler(own_stream),
    )
    own = logging.getLogger("focaltune_test_own")
    own.propagate = False
    logging.getLogger().addHandler(root_handler)
    own.addHandler(own_handler)
    yield root_stream, own_stream
    logging.getLogger().removeHandler(root_handler)
    own.removeHandler(own_handler)


def test_log_messages_args_and_tracebacks_are_masked(
    log_streams: tuple[io.StringIO, io.StringIO],
) -> None:
    root_stream, own_stream = log_streams
    install_secret_filter()
    child = logging.getLogger("focaltune_test.child")
    child.warning("opening %s", URL)
    child.warning("literal %(url)s", {"url": "mysql://u:hunter2@h/d"})
    try:
        raise RuntimeError(f"cannot connect to {URL}")
    except RuntimeError:
        child.exception("failed")
    logging.getLogger("focaltune_test_own").error("own handler sees %s", URL)
    written = root_stream.getvalue() + own_stream.getvalue()
    assert "s3cret" not in written and "hunter2" not in written
    assert written.count("alice:***@db.example") == 3  # message, traceback, own logger
    assert "Traceback" in written and "u:***@h/d" in written


def test_install_is_idempotent(log_streams: tuple[io.StringIO, io.StringIO]) -> None:
    install_secret_filter()
    install_secret_filter()
    for handler in logging.getLogger().handlers:
        assert sum(isinstance(f, SecretFilter) for f in handler.filters) == 1
