"""The whole search space in one function.

Parameter names equal config field names (``focal_gamma``, ``learning_rate``, ...);
the per-class weights are ``focal_alpha_0 .. focal_alpha_{K-1}`` and the optional
backbone choice is ``backbone`` (→ ``model.name_or_path``), so a trial maps straight
back to a ``TrainConfig`` with ``params_to_config``.
"""

from __future__ import annotations

from typing import Any

import optuna

from search.config import StudyConfig
from trainer.config import Hyperparams, ModelConfig, TrainConfig


def suggest(trial: optuna.Trial, base: StudyConfig) -> TrainConfig:
    """Sample one configuration from ``base.space`` and return the run's config."""
    s = base.space
    params: dict[str, Any] = {
        "focal_gamma": trial.suggest_float("focal_gamma", s.focal_gamma.low, s.focal_gamma.high),
        "label_smoothing": trial.suggest_float(
            "label_smoothing", s.label_smoothing.low, s.label_smoothing.high
        ),
        "learning_rate": trial.suggest_float(
            "learning_rate", s.learning_rate.low, s.learning_rate.high, log=True
        ),
        "epochs": trial.suggest_int("epochs", s.epochs.low, s.epochs.high),
    }
    if s.focal_alpha is not None:
        for k in range(len(base.data.labels or [])):
            params[f"focal_alpha_{k}"] = trial.suggest_float(
                f"focal_alpha_{k}", s.focal_alpha.low, s.focal_alpha.high, log=True
            )
    if s.backbones:
        params["backbone"] = trial.suggest_categorical("backbone", s.backbones)
    return params_to_config(params, base)


def params_to_config(params: dict[str, Any], base: StudyConfig) -> TrainConfig:
    """Trial params (as Optuna stores them) → the run's config; alphas normalised to mean 1."""
    n_alpha = sum(1 for name in params if name.startswith("focal_alpha_"))
    alphas = [params[f"focal_alpha_{k}"] for k in range(n_alpha)]
    if alphas:
        mean = sum(alphas) / len(alphas)
        alphas = [a / mean for a in alphas]
    hyper = Hyperparams(
        focal_gamma=params["focal_gamma"],
        focal_alpha=alphas or None,
        label_smoothing=params["label_smoothing"],
        learning_rate=params["learning_rate"],
        epochs=params["epochs"],
    )
    model = ModelConfig(name_or_path=params.get("backbone", base.model.name_or_path))
    return TrainConfig(data=base.data, model=model, train=base.train, params=hyper)


def hyperparams_to_params(hyper: Hyperparams, backbone: str | None = None) -> dict[str, Any]:
    """The inverse of ``params_to_config`` for the fields that were set: an ``enqueue``
    entry that names only some fields leaves the others to the sampler."""
    params: dict[str, Any] = hyper.model_dump(exclude={"focal_alpha"}, exclude_unset=True)
    for k, value in enumerate(hyper.focal_alpha or []):
        params[f"focal_alpha_{k}"] = value
    if backbone is not None:
        params["backbone"] = backbone
    return params
