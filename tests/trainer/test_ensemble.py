"""Ensemble: probability averaging, weights fitted on validation, the prior bias, and which
variant is served."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from trainer.config import EnsembleConfig
from trainer.final.ensemble import (
    Ensemble,
    apply_bias,
    average_probs,
    best_member,
    fit_ensemble,
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


def test_prior_bias_matches_the_predicted_shares_of_a_skewed_model() -> None:
    # A calibrated model's posteriors, re-weighted per class as a focal alpha would.
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    probs, labels = calibrated_problem(1, n=4000, prior=prior)
    alpha = np.array([0.3, 0.6, 1.5, 3.0])
    skewed = probs * alpha / (probs * alpha).sum(axis=1, keepdims=True)
    target = np.bincount(labels, minlength=4) / len(labels)
    bias = fit_prior_bias(skewed, target)
    fixed = apply_bias(skewed, bias)
    np.testing.assert_allclose(fixed.sum(axis=1), 1.0)
    before = np.abs(argmax_distribution(skewed) - target).max()
    assert before > 0.1
    assert np.abs(argmax_distribution(fixed) - target).max() < 0.01
    # The bias pushes against the re-weighting: down where alpha raised, up where it cut.
    assert np.all(np.diff(bias) < 0)
    assert bias.mean() == pytest.approx(0.0, abs=1e-8)  # centred


def test_prior_bias_fixes_shares_where_matching_the_mean_would_not() -> None:
    # Flattened probabilities, as label smoothing leaves them: the mean probability of the
    # majority class sits below its share, though argmax already over-predicts it.
    prior = np.array([0.55, 0.25, 0.12, 0.08])
    probs, labels = calibrated_problem(8, n=4000, prior=prior)
    flat = 0.6 * probs + 0.4 / 4
    target = np.bincount(labels, minlength=4) / len(labels)
    assert argmax_distribution(flat)[0] > target[0] + 0.05
    assert flat.mean(axis=0)[0] < target[0] - 0.05
    fixed = apply_bias(flat, fit_prior_bias(flat, target))
    assert np.abs(argmax_distribution(fixed) - target).max() < 0.01


def test_prior_bias_leaves_a_model_with_the_right_shares_nearly_unchanged() -> None:
    probs, labels = calibrated_problem(2, n=4000)
    bias = fit_prior_bias(probs, argmax_distribution(probs))
    assert np.abs(bias).max() < 0.05
    np.testing.assert_array_equal(apply_bias(probs, bias).argmax(axis=1), probs.argmax(axis=1))


def test_prior_bias_rejects_a_class_missing_from_the_target() -> None:
    probs, _ = calibrated_problem(3, n=50)
    with pytest.raises(ValueError, match="every class must occur"):
        fit_prior_bias(probs, np.array([10, 5, 0, 3]))
    with pytest.raises(ValueError, match="4 positive numbers"):
        fit_prior_bias(probs, np.array([0.5, 0.5]))


def sharpen(probs: np.ndarray, power: float) -> np.ndarray:
    """Same argmax per row, more (power > 1) or less (power < 1) confident."""
    p = probs**power
    return p / p.sum(axis=1, keepdims=True)


def skewed(labels: np.ndarray, skills: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Members pushed towards class 0 and away from class 3, as a focal alpha would."""
    alpha = np.array([4.0, 1.0, 1.0, 0.5])
    shifted = [member(labels, s, seed + i) * alpha for i, s in enumerate(skills)]
    return [p / p.sum(axis=1, keepdims=True) for p in shifted]


def confident_noise(n: int, seed: int, k: int = 4) -> np.ndarray:
    """A model sure of random classes: it pulls any mixture it is in away from the truth."""
    return softmax(6 * np.random.default_rng(seed).normal(size=(n, k)), axis=1)


def grouped(table: list[list[float]], size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Two classes; ``table[g][m]``: member m's probability of the true class in group g."""
    labels = np.arange(size * len(table)) % 2
    onehot = np.eye(2)[labels]
    members = []
    for m in range(len(table[0])):
        true = np.repeat([row[m] for row in table], size)[:, None]
        members.append(onehot * true + (1 - onehot) * (1 - true))
    return members, labels


def served(
    members: list[np.ndarray], labels: np.ndarray, prior: np.ndarray | None = None, **config
) -> Ensemble:
    """fit_ensemble, with the validation labels' own distribution as the default prior."""
    k = members[0].shape[1]
    prior = np.bincount(labels, minlength=k) / len(labels) if prior is None else prior
    return fit_ensemble(EnsembleConfig(**config), members, labels, prior)


def accuracies(ensemble: Ensemble) -> dict[str, float]:
    return {name: m["accuracy"] for name, m in ensemble.validation.items()}


def test_auto_serves_the_best_member_when_the_others_only_add_noise() -> None:
    labels = np.random.default_rng(0).integers(0, 4, size=400)
    noise = [confident_noise(400, seed) for seed in (2, 3)]
    ensemble = served([member(labels, 3.0, 1), *noise], labels, prior_correction=False)
    assert ensemble.chosen == "best"
    np.testing.assert_array_equal(ensemble.variants["best"].weights, [1.0, 0.0, 0.0])
    acc = accuracies(ensemble)
    assert acc["best"] > acc["uniform"] + 0.2
    # Tuned weights lean almost all on member 1: as accurate, a little worse in log-loss.
    assert (
        acc["tuned"] == pytest.approx(acc["best"])
        and "2 tied: lowest NLL" in ensemble.weights_source
    )
    assert ensemble.weights_source.startswith("member 1 alone")


def test_auto_serves_the_uniform_mean_when_members_err_on_different_rows() -> None:
    # Member 0 is very sure where it is right, so the log-loss leans on it; each member is
    # wrong on one group, and only the plain mean outvotes every one of them.
    table = [[0.35, 0.7, 0.7], [0.99, 0.3, 0.7], [0.99, 0.7, 0.3]]
    ensemble = served(*grouped(table, 10), prior_correction=False)
    assert ensemble.chosen == "uniform"
    assert accuracies(ensemble) == pytest.approx({"best": 2 / 3, "uniform": 1.0, "tuned": 2 / 3})


def test_auto_serves_tuned_weights_when_they_drop_the_noise_members() -> None:
    labels = np.random.default_rng(0).integers(0, 4, size=400)
    good = [member(labels, 1.5, seed) for seed in (1, 2)]
    noise = [confident_noise(400, seed) for seed in (3, 4)]
    ensemble = served(good + noise, labels, prior_correction=False)
    assert ensemble.chosen == "tuned"
    assert ensemble.variants["tuned"].weights[2:].max() < 0.01
    acc = accuracies(ensemble)
    assert acc["tuned"] > max(acc["best"], acc["uniform"]) + 0.05


def test_auto_serves_a_prior_corrected_variant_when_the_members_are_skewed() -> None:
    labels = np.random.default_rng(0).integers(0, 4, size=2000)
    ensemble = served(skewed(labels, (2.0, 1.0, 1.0), seed=0), labels)
    acc = accuracies(ensemble)
    assert ensemble.chosen == "uniform+prior"  # although bare uniform is the worst of all
    assert acc["uniform+prior"] > max(acc["best+prior"], acc["tuned+prior"]) + 0.005
    assert acc["uniform"] < min(acc["best"], acc["tuned"])
    assert ensemble.weights_source.endswith("among 6 candidates")


def test_equal_accuracy_goes_to_the_lower_nll_even_if_less_simple() -> None:
    labels = np.random.default_rng(3).integers(0, 4, size=1000)
    base = member(labels, 1.5, 5)
    # One argmax per row in every member, hence in every mixture: all accuracies are equal.
    members = [sharpen(base, 3.0), base, sharpen(base, 0.3)]
    ensemble = served(members, labels, prior_correction=False)
    assert len(set(accuracies(ensemble).values())) == 1
    nll = {name: m["nll"] for name, m in ensemble.validation.items()}
    assert ensemble.chosen == "tuned" and nll["tuned"] < min(nll["best"], nll["uniform"]) - 0.01
    assert "3 tied: lowest NLL" in ensemble.weights_source


def test_equal_accuracy_and_nll_go_to_the_simplest() -> None:
    probs, labels = calibrated_problem(4, n=300)
    # best, uniform and tuned are the same mixture, up to rounding in the mean.
    ensemble = served([probs] * 3, labels, prior_correction=False)
    assert ensemble.chosen == "best" and ensemble.weights_source.endswith("tied: the simplest")
    # The three +prior variants are one mixture too: whichever wins, it is best's.
    assert served([probs] * 3, labels).chosen.startswith("best")


@pytest.mark.parametrize("kind", ["best", "uniform", "tuned"])
def test_an_explicit_kind_adds_the_prior_bias_only_when_it_does_not_lower_accuracy(
    kind: str,
) -> None:
    labels = np.random.default_rng(0).integers(0, 4, size=2000)
    helped = served(skewed(labels, (2.0, 1.0, 1.0), seed=0), labels, weights=kind)
    assert helped.chosen == f"{kind}+prior"
    assert "the prior bias does not lower" in helped.weights_source
    # Balanced members told that training was 70% class 0: the bias pushes the wrong way.
    members = [member(labels, 2.0, seed) for seed in range(3)]
    wrong_prior = np.array([0.7, 0.1, 0.1, 0.1])
    hurt = served(members, labels, wrong_prior, weights=kind)
    assert hurt.chosen == kind
    assert accuracies(hurt)[f"{kind}+prior"] < accuracies(hurt)[kind] - 0.1
    bare = served(members, labels, weights=kind, prior_correction=False)
    assert bare.chosen == kind and set(bare.variants) == {"best", "uniform", "tuned"}


def test_select_macro_f1_serves_the_variant_with_the_best_validation_macro_f1() -> None:
    # A calibrated model of a skewed problem: argmax under-predicts the rare classes, so
    # matching the shares trades some accuracy for recall on them.
    probs, labels = calibrated_problem(10, n=4000, prior=np.array([0.7, 0.15, 0.1, 0.05]))
    prior = np.bincount(labels, minlength=4) / len(labels)
    by_accuracy = served([probs], labels, prior)
    by_f1 = served([probs], labels, prior, select="macro_f1")
    assert by_accuracy.chosen == "best" and by_f1.chosen == "best+prior"
    f1 = {name: m["macro_f1"] for name, m in by_f1.validation.items()}
    assert f1["best+prior"] > f1["best"] + 0.01
    assert accuracies(by_f1)["best+prior"] < accuracies(by_f1)["best"]
    assert "highest validation macro-F1" in by_f1.weights_source


@pytest.mark.parametrize("seed", range(10))
def test_auto_is_never_below_the_best_member_on_validation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=int(rng.integers(30, 300)))
    skills = rng.uniform(0.0, 3.0, size=int(rng.integers(1, 5)))
    members = [member(labels, s, seed * 10 + i, k=3) for i, s in enumerate(skills)]
    members = [sharpen(p, rng.uniform(0.3, 3.0)) for p in members]  # over/under-confident
    members += [confident_noise(len(labels), seed, k=3)] * int(rng.integers(0, 2))
    prior = rng.dirichlet(np.ones(3))  # training's prior, unrelated to validation's
    ensemble = served(members, labels, prior)
    # Both are correct counts over the same rows divided by the same n: exact comparison.
    best = max(probs_metrics(p, labels)["accuracy"] for p in members)
    assert ensemble.validation[ensemble.chosen]["accuracy"] >= best


def test_best_member_breaks_ties_by_nll_then_by_index() -> None:
    probs, labels = calibrated_problem(5, n=500)
    assert best_member([sharpen(probs, 4.0), probs], labels) == 1  # same accuracy, lower NLL
    assert best_member([probs, probs.copy()], labels) == 0
    assert best_member([probs, member(labels, 4.0, 6)], labels) == 1  # higher accuracy


def test_full_data_says_the_choice_came_from_the_train_only_pass() -> None:
    probs, labels = calibrated_problem(6, n=300)
    prior = np.full(4, 0.25)
    auto = fit_ensemble(EnsembleConfig(), [probs, probs], labels, prior, full_data=True)
    assert auto.weights_source.endswith("chosen on validation in the train-only pass")
    plain = EnsembleConfig(weights="uniform", prior_correction=False)
    assert fit_ensemble(plain, [probs], labels, prior, full_data=True).weights_source == (
        "uniform; configured weights: uniform"
    )
