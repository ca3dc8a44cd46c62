"""Labelled text tables: read, validate, map labels, split and subsample (stratified, seeded).

Every problem with the user's data is found here, before any trial starts, and raised as
one ``BadInput`` line naming the file, the 1-based data row and the column.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trainer.config import DataConfig
from trainer.errors import BadInput
from trainer.tables import read_table

log = logging.getLogger(__name__)

INT_LIKE = re.compile(r"^-?\d+$")


@dataclass
class Splits:
    """Train and eval texts with integer labels; ``label_names[i]`` is the name of id i."""

    train_texts: list[str]
    train_labels: np.ndarray
    eval_texts: list[str]
    eval_labels: np.ndarray
    label_names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def label_distribution(self, split: str = "train") -> np.ndarray:
        """Share of each class (id order) in the ``train`` or ``eval`` split."""
        labels = self.train_labels if split == "train" else self.eval_labels
        return np.bincount(labels, minlength=self.num_labels) / max(len(labels), 1)


def load_splits(cfg: DataConfig) -> Splits:
    """Read and validate train (and validation), then split and subsample as configured."""
    texts, raw = _read_labelled(cfg.train, cfg, what="data.train")
    names, by_id = _label_names(raw, cfg)
    labels = _encode(raw, names, by_id, cfg.train, cfg)
    counts = _check_classes(labels, names, cfg)
    if cfg.validation:
        eval_texts, eval_raw = _read_labelled(cfg.validation, cfg, what="data.validation")
        eval_labels = _encode(eval_raw, names, by_id, cfg.validation, cfg)
        _check_seen(eval_labels, labels, names, cfg.validation)
    else:
        picked = _split_eval(labels, cfg.validation_fraction, cfg.split_seed, len(names))
        rest = np.setdiff1d(np.arange(len(labels)), picked)
        eval_texts, eval_labels = _take(texts, labels, picked)
        texts, labels = _take(texts, labels, rest)
        _check_eval_split(eval_labels, counts, cfg)
    _warn_sparse(counts, names, cfg)
    present = np.count_nonzero(np.bincount(labels, minlength=len(names)))
    if cfg.max_train_samples is not None and cfg.max_train_samples < present:
        raise BadInput(
            f"data.max_train_samples={cfg.max_train_samples} is below the number of classes "
            f"({present}); raise it so every class keeps a training row"
        )
    texts, labels = _subsample(texts, labels, cfg.max_train_samples, cfg.split_seed, 1)
    eval_texts, eval_labels = _subsample(
        eval_texts, eval_labels, cfg.max_eval_samples, cfg.split_seed, 2
    )
    log.info("data: %d train / %d eval rows, %d classes", len(texts), len(eval_texts), len(names))
    return Splits(texts, labels, eval_texts, eval_labels, names)


def load_labelled(
    path: str, cfg: DataConfig, label_names: list[str], *, what: str
) -> tuple[list[str], np.ndarray]:
    """Texts and label ids of a labelled file (e.g. a test set) under an existing mapping."""
    texts, raw = _read_labelled(path, cfg, what=what)
    return texts, _encode(raw, label_names, cfg.labels is not None, path, cfg)


def _read_labelled(path: str, cfg: DataConfig, *, what: str) -> tuple[list[str], list[str]]:
    frame = read_table(path, what=what)
    columns = [(cfg.text_column, "data.text_column"), (cfg.label_column, "data.label_column")]
    _check_columns(frame, path, columns)
    return _texts(frame, cfg.text_column, path), _label_strings(frame, cfg.label_column, path)


def _check_columns(frame: pd.DataFrame, source: str, columns: list[tuple[str, str]]) -> None:
    for column, key in columns:
        if column not in frame.columns:
            raise BadInput(
                f"column {column!r} not found in {source}; its columns are "
                f"{[str(c) for c in frame.columns]}; set {key} to one of them"
            )


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask) + 1  # 1-based data rows, as a spreadsheet shows them
    shown = ", ".join(str(r) for r in rows[:3])
    more = f" (and {len(rows) - 3} more)" if len(rows) > 3 else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def _texts(frame: pd.DataFrame, column: str, source: str) -> list[str]:
    values = frame[column]
    missing = values.isna().to_numpy()
    texts = ["" if gone else str(value) for value, gone in zip(values, missing, strict=True)]
    empty = missing | np.array([not text.strip() for text in texts], dtype=bool)
    if empty.any():
        raise BadInput(
            f"empty text at {_rows(empty)} of {source} (column {column!r}); "
            "fill in or remove those rows"
        )
    return texts


def _label_strings(frame: pd.DataFrame, column: str, source: str) -> list[str]:
    values = frame[column]
    missing = values.isna().to_numpy()
    if missing.any():
        raise BadInput(
            f"missing (NaN) label at {_rows(missing)} of {source} (column {column!r}); "
            "fill in or remove those rows"
        )
    return [_canonical(value) for value in values]


def _canonical(value: object) -> str:
    """One spelling per label: 3, 3.0, "3" and "03" all become "3"; other values stay text."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _label_names(raw: list[str], cfg: DataConfig) -> tuple[list[str], bool]:
    """Label names in id order and whether integer labels may be read as ids into them."""
    if cfg.labels is not None:
        names = [str(name) for name in cfg.labels]
        if len(set(names)) != len(names):
            raise BadInput(f"data.labels {names} has duplicate names; list each class once")
        return names, True
    distinct = set(raw)
    if all(INT_LIKE.match(label) for label in distinct):
        ids = sorted(int(label) for label in distinct)
        if ids[0] < 0:
            bad = np.array([label == str(ids[0]) for label in raw])
            raise BadInput(
                f"negative label {ids[0]} at {_rows(bad)} of {cfg.train} (column "
                f"{cfg.label_column!r}); use ids 0..K-1 or list the names in data.labels"
            )
        names = [str(i) for i in ids]
    else:
        names = sorted(distinct)
    return names, False


def _check_classes(labels: np.ndarray, names: list[str], cfg: DataConfig) -> np.ndarray:
    """Rows per class (id order); fewer than 2 classes is refused."""
    counts = np.bincount(labels, minlength=len(names))
    if np.count_nonzero(counts) < 2:
        raise BadInput(
            f"{cfg.train} has a single class ({names[int(labels[0])]!r}) in column "
            f"{cfg.label_column!r}; a classifier needs at least 2 classes"
        )
    return counts


def _check_eval_split(eval_labels: np.ndarray, counts: np.ndarray, cfg: DataConfig) -> None:
    # Only classes with a spare row are evaluated: a class per row leaves nothing.
    if len(eval_labels) == 0:
        raise BadInput(
            f"the validation split of {cfg.train} is empty: no class of column "
            f"{cfg.label_column!r} has 2 rows ({len(counts)} classes in {counts.sum()} rows); "
            "use a label column with fewer classes, or give data.validation"
        )


def _listed(names: list[str], ids: np.ndarray, shown: int = 5) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(repr(names[i]) for i in ids[:shown]) + more


def _warn_sparse(counts: np.ndarray, names: list[str], cfg: DataConfig) -> None:
    """One warning per kind of sparse class, not one per class (there may be hundreds)."""
    absent = np.flatnonzero(counts == 0)
    if len(absent):
        log.warning(
            "%d class(es) of data.labels have no rows in %s: %s",
            len(absent),
            cfg.train,
            _listed(names, absent),
        )
    single = np.flatnonzero(counts == 1)
    if len(single) and not cfg.validation:
        log.warning(
            "%d class(es) have a single row in %s, so none in the eval split: %s",
            len(single),
            cfg.train,
            _listed(names, single),
        )


def _encode(
    raw: list[str], names: list[str], by_id: bool, source: str, cfg: DataConfig
) -> np.ndarray:
    """Map label strings to ids: by name, or (when ``by_id``) integer labels as ids."""
    ids = pd.Series(raw).map({name: i for i, name in enumerate(names)})
    if ids.isna().any() and by_id and all(INT_LIKE.match(label) for label in raw):
        ids = pd.Series([int(label) for label in raw])
        ids = ids.where((ids >= 0) & (ids < len(names)))
    bad = ids.isna().to_numpy()
    if bad.any():
        label = raw[int(np.argmax(bad))]
        if cfg.labels is None:
            raise BadInput(
                f"class {label!r} appears in {source} (column {cfg.label_column!r}, "
                f"{_rows(bad)}) but not in the training data; remove those rows"
            )
        raise BadInput(
            f"label {label!r} at {_rows(bad)} of {source} (column {cfg.label_column!r}) "
            f"is not in data.labels {names} (nor an id 0..{len(names) - 1}); add it there"
        )
    return ids.to_numpy(dtype=np.int64)


def _check_seen(eval_labels: np.ndarray, labels: np.ndarray, names: list[str], source: str) -> None:
    unseen = np.setdiff1d(np.unique(eval_labels), np.unique(labels))
    if len(unseen):
        raise BadInput(
            f"class {names[unseen[0]]!r} appears in {source} at "
            f"{_rows(eval_labels == unseen[0])} but not in the training data; "
            "remove those rows or add examples of it to data.train"
        )


def _allocate(counts: np.ndarray, total: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per-class sizes near ``total`` in proportion to ``counts``, each within [low, high]."""
    quota = counts * total / counts.sum()
    take = np.clip(np.floor(quota).astype(np.int64), low, high)
    while (gap := total - int(take.sum())) != 0:
        step = 1 if gap > 0 else -1
        # Largest rounding shortfall first (or largest excess when shrinking), ties by id.
        order = np.argsort(-(quota - take) * step, kind="stable")
        room = [c for c in order if (take[c] < high[c] if step > 0 else take[c] > low[c])]
        if not room:
            break
        take[room[: abs(gap)]] += step
    return take


def _pick(labels: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in enumerate(sizes)]
    return np.sort(np.concatenate(chosen))  # keep file order


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**32, stream])


def _split_eval(labels: np.ndarray, fraction: float, seed: int, num_labels: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_labels)
    total = max(1, round(fraction * len(labels)))
    # Every class with a spare row is evaluated, and every class keeps a training row; a
    # class with a single row therefore stays in train only.
    sizes = _allocate(counts, total, (counts >= 2).astype(np.int64), np.maximum(counts - 1, 0))
    return _pick(labels, sizes, _rng(seed, 0))


def _subsample(
    texts: list[str], labels: np.ndarray, limit: int | None, seed: int, stream: int
) -> tuple[list[str], np.ndarray]:
    if limit is None or limit >= len(labels):
        return texts, labels
    counts = np.bincount(labels)
    # Keep every class when the limit allows it; a tiny eval limit may drop some.
    low = np.minimum(counts, 1) if limit >= np.count_nonzero(counts) else 0 * counts
    sizes = _allocate(counts, limit, low, counts)
    return _take(texts, labels, _pick(labels, sizes, _rng(seed, stream)))


def _take(texts: list[str], labels: np.ndarray, index: np.ndarray) -> tuple[list[str], np.ndarray]:
    return [texts[i] for i in index], labels[index]
