"""Ensemble: probability averaging, weights fitted on validation, the prior bias."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from trainer.final.ensemble import (
    apply_bias,
    average_probs,
    fit_prior_bias,
    fit_weights,
)
from trainer.metrics import probs_metrics


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """The product's NLL of probabilities (what the tuned weights minimise)."""
    return probs_metrics(probs, labels)["nll"]


def calibrated_problem(
    seed: int, n: int = 2000, k: int = 4, prior: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Posteriors drawn at random and labels drawn from them: calibrated by construction."""
    rng = np.random.default_rng(seed)
    prior = np.full(k, 1.0 / k) if prior is None else prior
    probs = softmax(rng.normal(scale=1.5, size=(n, k)) + np.log(prior), axis=1)
    labels = np.array([rng.choice(k, p=row) for row in probs])
    return probs, labels


def member(labels: np.ndarray, skill: float, seed: int, k: int = 4) -> np.ndarray:
    """A model whose logits favour the true class by ``skill`` (0 = pure noise)."""
    rng = np.random.default_rng(seed)
    return softmax(rng.normal(size=(len(labels), k)) + skill * np.eye(k)[labels], axis=1)


def argmax_distribution(probs: np.ndarray) -> np.ndarray:
    return np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]) / len(probs)


def test_ensemble_of_identical_members_equals_one_member() -> None:
    probs, labels = calibrated_problem(0)
    # A weighted mean (tensordot, possibly BLAS) against the input: float64 ulps, not bits.
    np.testing.assert_allclose(average_probs([probs] * 3), probs, rtol=0, atol=1e-8)
    weights = fit_weights([probs] * 3, labels)
    np.testing.assert_allclose(average_probs([probs] * 3, weights), probs, atol=1e-8)


def test_average_probs_uses_normalised_weights() -> None:
    a, b = member(np.zeros(5, dtype=int), 1.0, 0), member(np.zeros(5, dtype=int), 1.0, 1)
    np.testing.assert_allclose(average_probs([a, b], [3.0, 1.0]), 0.75 * a + 0.25 * b)
    np.testing.assert_allclose(average_probs([a, b]), (a + b) / 2)


@pytest.mark.parametrize("weights", [[1.0], [1.0, -0.5], [0.0, 0.0], [np.nan, 1.0]], ids=str)
def test_average_probs_rejects_bad_weights(weights: list[float]) -> None:
    a = member(np.zeros(5, dtype=int), 1.0, 0)
    with pytest.raises(ValueError, match="weights"):
        average_probs([a, a], weights)


def test_average_probs_rejects_mismatched_members() -> None:
    a = member(np.zeros(5, dtype=int), 1.0, 0)
    with pytest.raises(ValueError, match="member 1"):
        average_probs([a, a[:4]])
    with pytest.raises(ValueError, match="no members"):
        average_probs([])


@pytest.mark.parametrize("seed", range(5))
def test_tuned_weights_are_on_the_simplex_and_never_worse_than_uniform(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=600)
    skills = rng.uniform(0.0, 3.0, size=3)
    members = [member(labels, s, seed * 10 + i) for i, s in enumerate(skills)]
    weights = fit_weights(members, labels)
    assert weights.shape == (3,) and np.all(weights >= 0)
    assert weights.sum() == pytest.approx(1.0)
    tuned = nll(average_probs(members, weights), labels)
    assert tuned <= nll(average_probs(members), labels) + 1e-8  # L-BFGS starts at uniform


def test_tuned_weights_down_weight_a_pure_noise_member() -> None:
    labels = np.random.default_rng(7).integers(0, 4, size=1000)
    members = [member(labels, 2.5, 1), member(labels, 2.0, 2), member(labels, 0.0, 3)]
    weights = fit_weights(members, labels)
    assert weights[2] < 0.05 and weights[2] == weights.min()
    uniform = nll(average_probs(members), labels)
    assert nll(average_probs(members, weights), labels) < uniform - 0.01


def test_prior_bias_recovers_a_skewed_prior() -> None:
    # A calibrated model's posteriors, re-weighted per class as a focal alpha would.
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    probs, labels = calibrated_problem(1, n=4000, prior=prior)
    alpha = np.array([0.3, 0.6, 1.5, 3.0])
    skewed = probs * alpha / (probs * alpha).sum(axis=1, keepdims=True)
    target = np.bincount(labels, minlength=4) / len(labels)
    bias = fit_prior_bias(skewed, target)
    fixed = apply_bias(skewed, bias)
    np.testing.assert_allclose(fixed.sum(axis=1), 1.0)
    np.testing.assert_allclose(fixed.mean(axis=0), target, atol=1e-6)
    before = np.abs(argmax_distribution(skewed) - target).sum()
    after = np.abs(argmax_distribution(fixed) - target).sum()
    assert after < before / 2
    # The fitted bias approximately undoes the re-weighting (up to a constant).
    centred = -np.log(alpha) + np.log(alpha).mean()
    np.testing.assert_allclose(bias, centred, atol=0.15)
    assert bias.mean() == pytest.approx(0.0, abs=1e-8)  # centred; uncentred would be ~0.1


def test_prior_bias_leaves_a_calibrated_model_nearly_unchanged() -> None:
    probs, labels = calibrated_problem(2, n=4000)
    target = np.bincount(labels, minlength=4) / len(labels)
    bias = fit_prior_bias(probs, target)
    assert np.abs(bias).max() < 0.1
    assert np.abs(apply_bias(probs, bias) - probs).max() < 0.05


def test_prior_bias_rejects_a_class_missing_from_the_target() -> None:
    probs, _ = calibrated_problem(3, n=50)
    with pytest.raises(ValueError, match="every class must occur"):
        fit_prior_bias(probs, np.array([10, 5, 0, 3]))
    with pytest.raises(ValueError, match="4 positive numbers"):
        fit_prior_bias(probs, np.array([0.5, 0.5]))
