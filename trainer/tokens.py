"""Tokenise once per (texts, labels, tokenizer, max_length) and share the result on disk.

Every trial and every worker process asks for the same encoded data; the first one to
finish writes it under ``<cache>/tokens/<sha256>`` and everyone else memory-maps it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, load_from_disk
from datasets.table import InMemoryTable
from datasets.utils import (
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
)

from trainer.files import staged_folder

CHARS_PER_TOKEN = 32  # generous: no real text needs more characters per kept token

log = logging.getLogger(__name__)

CACHE_VERSION = b"focaltune-tokens-1"  # bump when the stored layout changes
CHUNK = 10_000  # texts per tokenizer call: bounds the Python lists alive at once
COLUMNS = {
    "input_ids": pa.list_(pa.int32()),
    "attention_mask": pa.list_(pa.int8()),
    "token_type_ids": pa.list_(pa.int8()),
}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Folder of token cache entries: argument, else $FOCALTUNE_CACHE, else ~/.cache/focaltune."""
    base = cache_dir or os.environ.get("FOCALTUNE_CACHE") or Path.home() / ".cache" / "focaltune"
    return Path(base).expanduser() / "tokens"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything in the tokenizer that changes its output."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # Every call rewrites the backend's truncation/padding state; it is not identity.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        body = json.dumps(spec, sort_keys=True, ensure_ascii=False)
    else:  # a slow (pure Python) tokenizer: name and vocabulary are the best we have
        vocab = sorted(tokenizer.get_vocab().items())
        body = json.dumps([tokenizer.name_or_path, vocab], ensure_ascii=False)
    meta = {
        "class": type(tokenizer).__name__,
        "special": tokenizer.special_tokens_map,
        "inputs": list(tokenizer.model_input_names),
        "truncation_side": tokenizer.truncation_side,
    }
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    digest.update(body.encode())
    return digest.hexdigest()


def cache_key(
    texts: Sequence[str], labels: np.ndarray | None, tokenizer: Any, max_length: int
) -> str:
    """sha256 over the texts, labels, tokenizer fingerprint and max_length."""
    digest = hashlib.sha256(CACHE_VERSION)
    digest.update(f"{tokenizer_fingerprint(tokenizer)}|{max_length}|{len(texts)}".encode())
    for text in texts:
        data = text.encode("utf-8")
        # Length-prefixed, so ["ab", "c"] and ["a", "bc"] hash differently.
        digest.update(len(data).to_bytes(8, "little") + data)
    if labels is None:
        digest.update(b"no-labels")
    else:
        digest.update(b"labels" + np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def encode_cached(
    texts: Sequence[str],
    labels: np.ndarray | None,
    tokenizer: Any,
    max_length: int,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """Unpadded, truncated encodings (+ ``labels``, ``length``), tokenised once and cached."""
    if len(texts) == 0:
        raise ValueError("encode_cached needs at least one text")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{len(labels)} labels for {len(texts)} texts")
    labels = None if labels is None else np.asarray(labels, dtype=np.int64)
    path = cache_root(cache_dir) / cache_key(texts, labels, tokenizer, max_length)
    if path.exists():
        log.info("tokenisation cache hit %s", path)
        return load_from_disk(str(path))
    start = time.perf_counter()
    table = _encode(texts, labels, tokenizer, max_length)
    _publish(Dataset(InMemoryTable(table)), path)
    log.info("tokenised %d texts in %.1f s -> %s", len(texts), time.perf_counter() - start, path)
    return load_from_disk(str(path))


def _encode(
    texts: Sequence[str], labels: np.ndarray | None, tokenizer: Any, max_length: int
) -> pa.Table:
    chunks = []
    for begin in range(0, len(texts), CHUNK):
        # Truncation happens after tokenising the whole text: cut absurdly long texts
        # first (a token covers at least one character, whitespace aside).
        limit = max_length * CHARS_PER_TOKEN
        batch = [str(text)[:limit] for text in texts[begin : begin + CHUNK]]
        encoded = tokenizer(
            batch, truncation=True, max_length=max_length, return_attention_mask=True
        )
        columns = {
            name: pa.array(encoded[name], type=kind)
            for name, kind in COLUMNS.items()
            if name in encoded
        }
        if labels is not None:
            columns["labels"] = pa.array(labels[begin : begin + CHUNK], type=pa.int64())
        columns["length"] = pa.array([len(ids) for ids in encoded["input_ids"]], pa.int32())
        chunks.append(pa.table(columns))
    return pa.concat_tables(chunks)


def _publish(dataset: Dataset, path: Path) -> None:
    """Write to a private staging folder, then rename it into place in one atomic step."""
    quiet = are_progress_bars_disabled()
    disable_progress_bars()  # one bar per write would flood worker logs
    try:
        with staged_folder(path) as temp:
            dataset.save_to_disk(str(temp))
    except OSError:
        # Another worker renamed its copy first: theirs is complete and identical.
        if not path.exists():
            raise
    finally:
        if not quiet:
            enable_progress_bars()
