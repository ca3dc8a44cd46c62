"""Focal loss with per-class alpha and label smoothing, numerically stable in float32.

Per example, with K classes, smoothed targets q = (1 - eps) * onehot(y) + eps / K and
p = softmax(logits):

    L = -sum_k alpha_k * q_k * (1 - p_k) ** gamma * log p_k

eps = 0 gives Lin et al.'s focal loss -alpha_y (1 - p_y) ** gamma log p_y; gamma = 0 gives
exactly ``F.cross_entropy(logits, y, weight=alpha, label_smoothing=eps, reduction="none")``.
Smoothing lives here because the Hugging Face Trainer ignores ``label_smoothing_factor``
once a custom loss is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from trainer.errors import BadInput

Reduction = Literal["none", "sum", "mean"]

# Floor for (1 - p). For gamma < 1 the derivative gamma * (1 - p) ** (gamma - 1) is infinite
# at p = 1, which float32 reaches for confident predictions; the floor keeps it finite and
# the clamp passes no gradient below it.
_MIN_ONE_MINUS_P = 1e-12


def normalise_alpha(alpha: Sequence[float] | None, num_classes: int) -> torch.Tensor:
    """Per-class weights as a float32 tensor scaled to mean 1 (all ones when None).

    Mean 1 keeps the loss scale, and so the effective learning rate, independent of alpha.
    """
    if alpha is None:
        return torch.ones(num_classes, dtype=torch.float32)
    values = [float(a) for a in alpha]
    if len(values) != num_classes:
        raise BadInput(
            f"focal_alpha has {len(values)} values {values} but the data has {num_classes} "
            f"classes (key focal_alpha): give exactly {num_classes} weights, one per class "
            "in label order, or leave it unset for equal weights"
        )
    bad = [a for a in values if not (math.isfinite(a) and a > 0)]
    if bad:
        raise BadInput(
            f"focal_alpha contains non-positive or non-finite weights {bad} (key focal_alpha): "
            "every class weight must be a finite number > 0"
        )
    tensor = torch.tensor(values, dtype=torch.float64)
    return (tensor / tensor.mean()).to(torch.float32)


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    gamma: float,
    alpha: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Focal loss of ``logits`` (N, K) against integer ``labels`` (N,), in float32.

    ``reduction="mean"`` is the plain mean over the N examples. Under gradient accumulation
    the Trainer must instead use ``reduction="sum"`` divided by ``num_items_in_batch``:
    the Trainer does not rescale a custom loss by the accumulation steps (PITFALLS.md).
    """
    _check_arguments(logits, labels, gamma, alpha, label_smoothing)
    num_classes = logits.shape[-1]
    # bf16/fp16 logits are cast up: log-softmax and the power lose too much precision below.
    logp = F.log_softmax(logits.float(), dim=-1)
    target = F.one_hot(labels.long(), num_classes).to(logp.dtype)
    if label_smoothing > 0:
        target = target * (1.0 - label_smoothing) + label_smoothing / num_classes
    terms = target * logp
    if gamma != 0:
        # 1 - p as -expm1(log p) stays accurate when p is close to 1, unlike 1 - exp(log p).
        one_minus_p = (-torch.expm1(logp)).clamp(min=_MIN_ONE_MINUS_P)
        terms = terms * one_minus_p.pow(gamma)
    if alpha is not None:
        terms = terms * alpha.to(device=logp.device, dtype=logp.dtype)
    per_example = -terms.sum(dim=-1)
    return _reduce(per_example, reduction)


def _check_arguments(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float,
    alpha: torch.Tensor | None,
    label_smoothing: float,
) -> None:
    # Programming errors, not user input: the config layer has already validated the values.
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"focal_loss needs logits (N, K) and labels (N,), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if gamma < 0:
        raise ValueError(f"focal_loss gamma must be >= 0, got {gamma}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"focal_loss label_smoothing must be in [0, 1), got {label_smoothing}")
    if alpha is not None and alpha.shape != logits.shape[-1:]:
        raise ValueError(
            f"focal_loss alpha has shape {tuple(alpha.shape)}, expected ({logits.shape[-1]},)"
        )


def _reduce(per_example: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return per_example.sum()
    if reduction == "mean":
        return per_example.mean()
    raise ValueError(f"focal_loss reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
