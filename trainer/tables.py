"""Reading a table: csv/tsv/json/jsonl/parquet files (gzip too) or a Hub dataset.

Unreadable input is raised as one ``BadInput`` line naming the file and what to fix.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pandas as pd

from trainer.errors import BadInput, first_line

FORMATS = {".csv": "CSV", ".tsv": "TSV", ".json": "JSON", ".jsonl": "JSONL", ".parquet": "Parquet"}
HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?$")


def read_table(source: str | Path, *, what: str) -> pd.DataFrame:
    """Read a csv/tsv/json/jsonl/parquet file (.gz too) or a Hub dataset ``owner/name[:split]``."""
    path = Path(source)
    suffix, compressed = _suffix(path)
    if not path.exists():
        if suffix not in FORMATS and HUB_NAME.match(str(source)):
            return _read_hub(str(source), what=what)
        raise BadInput(
            f"{path} not found; check {what} (a path relative to {Path.cwd()}, "
            "or a Hub dataset name such as owner/name:split)"
        )
    if suffix not in FORMATS or (compressed and suffix == ".parquet"):
        raise BadInput(
            f"unsupported file type of {path} ({what}); use .csv, .tsv, .json, .jsonl "
            "(each optionally .gz) or .parquet"
        )
    if path.is_dir() or path.stat().st_size == 0:
        raise BadInput(f"{path} is empty or not a file; check {what}")
    try:
        frame = _read_file(path, suffix, compressed)
    except UnicodeDecodeError:
        raise _utf8_error(path, compressed, what) from None
    except pd.errors.EmptyDataError:
        raise BadInput(f"{path} has no header or data rows; check {what}") from None
    except Exception as error:  # pandas, pyarrow and gzip each raise their own types
        raise BadInput(
            f"cannot read {path} as {FORMATS[suffix]} ({first_line(error)}); "
            f"check the file's format or its suffix ({what})"
        ) from error
    return _non_empty(frame, path, what)


def _suffix(path: Path) -> tuple[str | None, bool]:
    name = path.name.lower()
    compressed = name.endswith(".gz")
    suffix = Path(name.removesuffix(".gz")).suffix
    return (suffix or None), compressed


def _read_file(path: Path, suffix: str, compressed: bool) -> pd.DataFrame:
    gz = "gzip" if compressed else None
    if suffix in (".csv", ".tsv"):
        # All columns as str: a review "NA" or "1.50" stays what the user wrote; only an
        # empty field is missing.
        sep = "," if suffix == ".csv" else "\t"
        return pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], compression=gz
        )
    if suffix == ".parquet":
        return pd.read_parquet(path)
    options = {"compression": gz, "dtype": False, "encoding": "utf-8"}
    if suffix == ".json":
        try:
            return pd.read_json(path, **options)
        except ValueError:  # many people save JSON lines as .json
            pass
    return pd.read_json(path, lines=True, **options)


def _read_hub(name: str, *, what: str) -> pd.DataFrame:
    repo, _, split = name.partition(":")
    try:
        import datasets

        frame = datasets.load_dataset(repo, split=split or "train").to_pandas()
    except Exception as error:  # offline, unknown name, bad split, broken script: all bad input
        raise BadInput(
            f"{name!r} is neither an existing file nor a loadable Hub dataset "
            f"({type(error).__name__}: {first_line(error)}); check {what}"
        ) from error
    return _non_empty(frame, name, what)


def _non_empty(frame: pd.DataFrame, source: str | Path, what: str) -> pd.DataFrame:
    if len(frame) == 0:
        raise BadInput(f"{source} has no data rows; check {what}")
    return frame


def _utf8_error(path: Path, compressed: bool, what: str) -> BadInput:
    raw = gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        where = "uncompressed byte offset" if compressed else "byte offset"
        return BadInput(
            f"{path} is not UTF-8: byte 0x{raw[error.start]:02x} at {where} {error.start} "
            f"(line {line}); re-save the file as UTF-8 ({what})"
        )
    return BadInput(f"{path} is not valid UTF-8; re-save the file as UTF-8 ({what})")
