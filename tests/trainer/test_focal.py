"""Focal loss: agreement with cross-entropy and Lin et al., stability, alpha handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.errors import BadInput
from trainer.focal import focal_loss, normalise_alpha

K = 4


def random_batch(seed: int, n: int = 64, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, K, generator=generator) * scale
    labels = torch.randint(0, K, (n,), generator=generator)
    return logits, labels


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("raw_alpha", [None, [1.0, 1.0, 1.0, 1.0], [0.25, 1.0, 2.0, 4.0]])
def test_gamma_zero_is_weighted_smoothed_cross_entropy(
    smoothing: float, raw_alpha: list[float] | None
) -> None:
    logits, labels = random_batch(seed=1)
    alpha = normalise_alpha(raw_alpha, K)
    ours = focal_loss(
        logits, labels, gamma=0.0, alpha=alpha, label_smoothing=smoothing, reduction="none"
    )
    reference = F.cross_entropy(
        logits, labels, weight=alpha, label_smoothing=smoothing, reduction="none"
    )
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    ours_sum = focal_loss(
        logits, labels, gamma=0.0, alpha=alpha, label_smoothing=smoothing, reduction="sum"
    )
    torch.testing.assert_close(ours_sum, reference.sum(), rtol=1e-5, atol=1e-5)


def lin_focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float, alpha: np.ndarray):
    """Lin et al. 2017 written directly from softmax probabilities, in float64."""
    z = logits.double().numpy()
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    p_true = probs[np.arange(len(z)), labels.numpy()]
    return -alpha[labels.numpy()] * (1.0 - p_true) ** gamma * np.log(p_true)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_no_smoothing_matches_lin_et_al(gamma: float) -> None:
    logits, labels = random_batch(seed=2, scale=2.0)
    alpha = normalise_alpha([0.5, 1.0, 3.0, 1.5], K)
    ours = focal_loss(logits, labels, gamma=gamma, alpha=alpha, reduction="none")
    expected = lin_focal_loss(logits, labels, gamma, alpha.double().numpy())
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=1e-4, atol=1e-6)
    assert float(focal_loss(logits, labels, gamma=gamma, alpha=alpha)) == pytest.approx(
        expected.mean(), rel=1e-4
    )


def saturated_logits(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # Rows: confidently right (p_y ~ 1), confidently wrong, extreme +-50, an exact tie.
    logits = torch.tensor(
        [
            [50.0, -50.0, -50.0, -50.0],
            [-50.0, 50.0, -50.0, -50.0],
            [50.0, -50.0, 50.0, -50.0],
            [0.0, 0.0, 0.0, 0.0],
            [30.0, 0.0, 0.0, 0.0],
        ]
    )
    labels = torch.tensor([0, 0, 2, 3, 0])
    return logits.to(dtype), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gradients_stay_finite_on_saturated_logits(
    dtype: torch.dtype, gamma: float, smoothing: float
) -> None:
    logits, labels = saturated_logits(dtype)
    logits.requires_grad_(True)
    alpha = normalise_alpha([1.0, 2.0, 0.5, 1.0], K)
    loss = focal_loss(logits, labels, gamma=gamma, alpha=alpha, label_smoothing=smoothing)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert logits.grad is not None and logits.grad.dtype == dtype
    assert torch.isfinite(logits.grad.float()).all()
    # The confidently wrong row must still push its logits: a clamp that zeroed every
    # gradient would also be "finite".
    assert logits.grad[1].abs().sum() > 0


def test_unclamped_power_would_give_nan() -> None:
    # Shows why the clamp exists: the naive (1 - p) ** 0.5 has an infinite derivative at p = 1.
    logits = torch.tensor([[50.0, -50.0, -50.0, -50.0]], requires_grad=True)
    logp = F.log_softmax(logits, dim=-1)
    naive = -((-torch.expm1(logp)) ** 0.5 * logp)[0, 0]
    naive.backward()
    assert not torch.isfinite(logits.grad).all()
    logits.grad = None
    focal_loss(logits, torch.tensor([0]), gamma=0.5).backward()
    assert torch.isfinite(logits.grad).all()


def test_larger_gamma_down_weights_easy_examples() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0])  # row 0 easy (p ~ 0.95), row 1 hard (p ~ 0.35)
    ratios = []
    for gamma in [0.0, 1.0, 2.0, 5.0]:
        easy, hard = focal_loss(logits, labels, gamma=gamma, reduction="none").tolist()
        assert easy < hard
        ratios.append(easy / hard)
    assert all(later < earlier for earlier, later in zip(ratios, ratios[1:], strict=False))


def test_normalise_alpha_scales_to_mean_one() -> None:
    raw = [0.25, 1.0, 2.0, 4.0]
    alpha = normalise_alpha(raw, K)
    assert alpha.dtype == torch.float32
    assert float(alpha.mean()) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(alpha.numpy(), np.array(raw) / np.mean(raw), rtol=1e-6)
    assert torch.equal(normalise_alpha(None, 3), torch.ones(3))


def test_normalise_alpha_rejects_wrong_length() -> None:
    with pytest.raises(BadInput, match="has 3 values.*4 classes.*exactly 4 weights"):
        normalise_alpha([1.0, 2.0, 3.0], K)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_normalise_alpha_rejects_non_positive(bad: float) -> None:
    with pytest.raises(BadInput, match="focal_alpha"):
        normalise_alpha([1.0, bad, 1.0, 1.0], K)


def test_mean_is_sum_over_examples() -> None:
    logits, labels = random_batch(seed=3, n=10)
    per_example = focal_loss(logits, labels, gamma=2.0, label_smoothing=0.1, reduction="none")
    assert per_example.shape == (10,)
    mean = focal_loss(logits, labels, gamma=2.0, label_smoothing=0.1, reduction="mean")
    total = focal_loss(logits, labels, gamma=2.0, label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(mean * 10, total)
    torch.testing.assert_close(total, per_example.sum())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": -1.0}, "gamma"),
        ({"gamma": 1.0, "label_smoothing": 1.0}, "label_smoothing"),
        ({"gamma": 1.0, "alpha": torch.ones(3)}, "alpha"),
        ({"gamma": 1.0, "reduction": "avg"}, "reduction"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    logits, labels = random_batch(seed=5, n=4)
    with pytest.raises(ValueError, match=message):
        focal_loss(logits, labels, **kwargs)
