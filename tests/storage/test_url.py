"""Storage URL precedence, validation and the psycopg 3 rewrite."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.errors import BadStorage
from storage.url import DEFAULT_URL, ENV_VAR, describe, normalize_url, resolve_url, sqlite_path

PG = "postgresql+psycopg://alice:s3cret@db.example:5432/studies"


def test_flag_beats_environment_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "sqlite:///from-env.db")
    assert resolve_url("sqlite:///from-flag.db", "sqlite:///from-config.db") == (
        "sqlite:///from-flag.db"
    )


def test_environment_beats_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "sqlite:///from-env.db")
    assert resolve_url(None, "sqlite:///from-config.db") == "sqlite:///from-env.db"


def test_config_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_url(None, "sqlite:///from-config.db") == "sqlite:///from-config.db"


def test_default_when_nothing_or_blank_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "  ")
    assert resolve_url("", None) == DEFAULT_URL == "sqlite:///focaltune.db"


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_plain_postgres_urls_get_the_psycopg3_driver(scheme: str) -> None:
    url = f"{scheme}://alice:p%40ss@db.example:5432/studies?sslmode=require"
    assert normalize_url(url) == (
        "postgresql+psycopg://alice:p%40ss@db.example:5432/studies?sslmode=require"
    )


@pytest.mark.parametrize(
    "url", [PG, "sqlite:///runs/a.db", "sqlite:///:memory:", "mysql+pymysql://u:p@h/db"]
)
def test_supported_urls_pass_through_unchanged(url: str) -> None:
    assert normalize_url(url) == url


def test_malformed_url_names_source_and_hides_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "postgresql://alice:s3cret@db.example:notaport/studies")
    with pytest.raises(BadStorage) as caught:
        resolve_url(None, None)
    message = str(caught.value)
    assert ENV_VAR in message and "alice:***@db.example" in message
    assert "s3cret" not in message and "\n" not in message


@pytest.mark.parametrize("url", ["not a url", "focaltune.db"])
def test_url_without_scheme_is_rejected_with_an_example(url: str) -> None:
    with pytest.raises(BadStorage, match="sqlite:///focaltune.db"):
        resolve_url(url, None)


def test_unsupported_backend_is_rejected() -> None:
    with pytest.raises(BadStorage, match="oracle.*study.storage") as caught:
        resolve_url(None, "oracle://scott:tiger@h/db")
    assert "tiger" not in str(caught.value)


def test_sqlite_path_of_file_memory_and_server_urls() -> None:
    assert sqlite_path("sqlite:///runs/a.db") == Path("runs/a.db")
    assert sqlite_path("sqlite:////abs/a.db") == Path("/abs/a.db")
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite://") is None
    assert sqlite_path(PG) is None


def test_describe_hides_password_and_resolves_sqlite_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert describe(PG) == "postgresql+psycopg://alice:***@db.example:5432/studies"
    assert str(tmp_path / "a.db") in describe("sqlite:///a.db")
