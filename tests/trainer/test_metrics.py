"""Classification metrics, checked against answers computed independently with loops."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax

from trainer.metrics import classification_metrics, confusion_matrix

K = 4


def logits_for(preds: list[int], num_labels: int = K, seed: int = 0) -> np.ndarray:
    """Random logits whose argmax is exactly ``preds``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(preds), num_labels))
    logits[np.arange(len(preds)), preds] = logits.max(axis=1) + 1.0 + rng.random(len(preds))
    return logits


def loop_confusion(labels: list[int], preds: list[int], k: int) -> list[list[int]]:
    counts = [[0] * k for _ in range(k)]
    for true, pred in zip(labels, preds, strict=True):
        counts[true][pred] += 1
    return counts


def loop_scores(labels: list[int], preds: list[int], k: int) -> tuple[list[float], list[float]]:
    """Per-class recall and F1 by counting, with 0 where a denominator is 0."""
    recall, f1 = [], []
    for c in range(k):
        tp = sum(1 for t, p in zip(labels, preds, strict=True) if t == c and p == c)
        fn = sum(1 for t, p in zip(labels, preds, strict=True) if t == c and p != c)
        fp = sum(1 for t, p in zip(labels, preds, strict=True) if t != c and p == c)
        rec = tp / (tp + fn) if tp + fn else 0.0
        prec = tp / (tp + fp) if tp + fp else 0.0
        recall.append(rec)
        f1.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return recall, f1


LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 0]
PREDS = [0, 1, 0, 1, 2, 2, 2, 0, 2, 3, 1, 0]


def test_counts_match_independent_loops() -> None:
    metrics = classification_metrics(logits_for(PREDS), np.array(LABELS), K)
    assert metrics["confusion"] == loop_confusion(LABELS, PREDS, K)
    recall, f1 = loop_scores(LABELS, PREDS, K)
    assert metrics["recall"] == pytest.approx(recall)
    assert metrics["f1"] == pytest.approx(f1)
    assert metrics["macro_f1"] == pytest.approx(sum(f1) / K)
    correct = sum(t == p for t, p in zip(LABELS, PREDS, strict=True))
    assert metrics["accuracy"] == pytest.approx(correct / len(LABELS))
    assert metrics["pred_distribution"] == pytest.approx([PREDS.count(c) / 12 for c in range(K)])
    assert metrics["label_distribution"] == pytest.approx([LABELS.count(c) / 12 for c in range(K)])


def test_nll_matches_scipy_log_softmax() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=5.0, size=(50, K)).astype(np.float32)
    labels = rng.integers(0, K, size=50)
    expected = -np.mean(log_softmax(logits.astype(np.float64), axis=1)[np.arange(50), labels])
    metrics = classification_metrics(logits, labels, K)
    # Both sides are float64 log-softmax of the same float32 logits (two formulas): they
    # agree to ~1e-15 relative on any CPU. 1e-8 still fails an NLL computed in float32
    # (off by ~1e-7), which is what this test guards against.
    assert metrics["nll"] == pytest.approx(expected, rel=1e-8)


def test_nll_is_stable_for_huge_logits() -> None:
    logits = np.array([[1000.0, -1000.0, 0.0, 0.0], [-1000.0, 1000.0, 0.0, 0.0]])
    labels = np.array([0, 0])
    expected = -np.mean(log_softmax(logits, axis=1)[[0, 1], labels])
    assert classification_metrics(logits, labels, K)["nll"] == pytest.approx(expected)


def test_tv_distance_is_zero_when_prediction_mix_matches_labels() -> None:
    labels = [0, 1, 2, 3, 0, 1]
    preds = [1, 0, 3, 2, 1, 0]  # every prediction wrong, yet the same class mix
    metrics = classification_metrics(logits_for(preds), np.array(labels), K)
    assert metrics["pred_tv_distance"] == 0.0
    assert metrics["accuracy"] == 0.0


def test_tv_distance_of_collapsed_predictions() -> None:
    labels = [0, 1, 2, 3, 0, 1, 2, 3]
    preds = [0] * 8  # everything predicted as class 0
    metrics = classification_metrics(logits_for(preds), np.array(labels), K)
    label_dist = [labels.count(c) / 8 for c in range(K)]
    pred_dist = [preds.count(c) / 8 for c in range(K)]
    expected = 0.5 * sum(abs(p - q) for p, q in zip(pred_dist, label_dist, strict=True))
    assert metrics["pred_tv_distance"] == pytest.approx(expected)


def test_class_missing_from_labels_and_predictions_counts_as_zero_f1() -> None:
    labels = [0, 1, 2, 0, 1, 2]  # class 3 never occurs and is never predicted
    metrics = classification_metrics(logits_for(labels), np.array(labels), K)
    assert metrics["accuracy"] == 1.0
    assert metrics["f1"][:3] == [1.0, 1.0, 1.0]
    assert metrics["recall"][3] == 0.0 and metrics["f1"][3] == 0.0
    assert metrics["macro_f1"] == pytest.approx(3 / K)


def test_class_predicted_but_absent_from_labels() -> None:
    labels = [0, 0, 1, 1]
    preds = [0, 3, 1, 1]
    metrics = classification_metrics(logits_for(preds), np.array(labels), K)
    recall, f1 = loop_scores(labels, preds, K)
    assert metrics["recall"] == pytest.approx(recall)
    assert metrics["f1"] == pytest.approx(f1)
    assert metrics["f1"][3] == 0.0


def test_result_is_plain_json() -> None:
    metrics = classification_metrics(logits_for(PREDS), np.array(LABELS, dtype=np.int32), K)
    assert json.loads(json.dumps(metrics)) == metrics
    for value in metrics.values():
        assert type(value) in (float, list)
    assert all(type(n) is int for row in metrics["confusion"] for n in row)


def test_confusion_rows_are_true_classes() -> None:
    matrix = confusion_matrix(np.array([2, 2, 2]), np.array([0, 0, 1]), 3)
    assert matrix[2].tolist() == [2, 1, 0]
    assert matrix.sum(axis=1).tolist() == [0, 0, 3]


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (np.zeros((3, 3)), np.array([0, 1, 2]), "logits"),
        (np.zeros((3, K)), np.array([0, 1]), "labels"),
        (np.zeros((3, K)), np.array([0, 1, K]), "integers"),
        (np.zeros((2, K)), np.array([0.0, 1.5]), "integers"),
        (np.zeros((0, K)), np.array([], dtype=int), "N > 0"),
    ],
)
def test_rejects_mismatched_inputs(logits: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(logits, labels, K)
