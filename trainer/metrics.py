"""Evaluation metrics for a K-class classifier, from logits, in plain numpy.

Every value is a JSON-serialisable Python float, int or list, so the dict can go straight
into Optuna user attributes, ``metrics.json`` and W&B.

Convention for classes that are rare in a small evaluation set: a precision, recall or F1
whose denominator is zero is 0 (as scikit-learn's ``zero_division=0``). A class absent
from both the labels and the predictions therefore scores F1 = 0, and ``macro_f1``
still averages over all ``num_labels`` classes, so it never looks better for a missing
class.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, num_labels: int
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall/precision/F1, NLL, class distributions, confusion.

    ``nll`` is the unsmoothed, unweighted mean negative log-likelihood: unlike the training
    loss it does not depend on the trial's gamma, alpha or label smoothing, so trials can be
    compared on it.
    """
    logits, labels = _checked(logits, labels, num_labels)
    preds = logits.argmax(axis=-1)
    confusion = confusion_matrix(labels, preds, num_labels)
    true_positive = np.diag(confusion).astype(np.float64)
    per_true = confusion.sum(axis=1)
    per_pred = confusion.sum(axis=0)
    recall = _safe_divide(true_positive, per_true)
    precision = _safe_divide(true_positive, per_pred)
    # 2TP / (2TP + FP + FN) equals the harmonic mean of precision and recall.
    f1 = _safe_divide(2 * true_positive, per_true + per_pred)
    pred_distribution = per_pred / len(labels)
    label_distribution = per_true / len(labels)
    return {
        "accuracy": float(true_positive.sum() / len(labels)),
        "macro_f1": float(f1.mean()),
        "recall": _floats(recall),
        "precision": _floats(precision),
        "f1": _floats(f1),
        "nll": negative_log_likelihood(logits, labels),
        "pred_distribution": _floats(pred_distribution),
        "label_distribution": _floats(label_distribution),
        "pred_tv_distance": float(0.5 * np.abs(pred_distribution - label_distribution).sum()),
        "confusion": confusion.tolist(),
    }


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> np.ndarray:
    """K x K counts (int64): rows are true classes, columns predicted classes."""
    flat = labels.astype(np.int64) * num_labels + preds.astype(np.int64)
    return np.bincount(flat, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log softmax(logits)[label], computed in float64 for stability."""
    wide = logits.astype(np.float64)
    shifted = wide - wide.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    picked = shifted[np.arange(len(labels)), labels]
    return float(np.mean(log_norm - picked))


def _checked(
    logits: np.ndarray, labels: np.ndarray, num_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    # Called on evaluation outputs, not raw user files (those are checked in trainer/data),
    # so a mismatch here is a programming error: ValueError, not BadInput.
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[1] != num_labels:
        raise ValueError(f"logits must have shape (N, {num_labels}), got {logits.shape}")
    if labels.shape != logits.shape[:1] or len(labels) == 0:
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) with N > 0, got {labels.shape}"
        )
    as_int = labels.astype(np.int64)
    if not np.array_equal(as_int, labels) or as_int.min() < 0 or as_int.max() >= num_labels:
        raise ValueError(f"labels must be integers in [0, {num_labels}), got {np.unique(labels)}")
    return logits, as_int


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # Zero denominators give 0 (see the module docstring), without a numpy warning.
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def probs_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Classification metrics of probabilities (rather than logits)."""
    # log p are valid logits: softmax(log p) = p, so the NLL is that of the probabilities.
    return classification_metrics(np.log(np.clip(probs, 1e-15, 1.0)), labels, probs.shape[1])
