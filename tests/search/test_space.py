"""The search space: names equal config fields, a trial maps back to its config."""

from __future__ import annotations

import optuna
import pytest

from search.config import parse_study_config
from search.space import hyperparams_to_params, params_to_config, suggest
from trainer.config import Hyperparams

RAW = {
    "study": {"name": "x"},
    "data": {"train": "t.csv", "labels": ["a", "b", "c"]},
    "model": {"name_or_path": "m"},
    "space": {"learning_rate": [1e-5, 1e-3], "epochs": [1, 4], "backbones": ["m1", "m2"]},
}


def test_suggest_samples_every_field_within_bounds() -> None:
    cfg = parse_study_config(RAW, "c.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        run = suggest(trial, cfg)
        p = run.params
        assert 0 <= p.focal_gamma <= 5 and 0 <= p.label_smoothing <= 0.3
        assert 1e-5 <= p.learning_rate <= 1e-3 and 1 <= p.epochs <= 4
        assert len(p.focal_alpha) == 3 and sum(p.focal_alpha) == pytest.approx(3.0)
        assert run.model.name_or_path in ("m1", "m2")
        assert set(trial.params) == {
            "focal_gamma",
            "label_smoothing",
            "learning_rate",
            "epochs",
            "backbone",
            "focal_alpha_0",
            "focal_alpha_1",
            "focal_alpha_2",
        }
        assert isinstance(
            trial.distributions["learning_rate"], optuna.distributions.FloatDistribution
        )
        assert trial.distributions["learning_rate"].log and trial.distributions["focal_alpha_0"].log
        study.tell(trial, 0.5)


def test_params_round_trip() -> None:
    cfg = parse_study_config(RAW, "c.yaml")
    hyper = Hyperparams(
        focal_gamma=1.5,
        focal_alpha=[0.5, 1.0, 1.5],
        label_smoothing=0.1,
        learning_rate=3e-4,
        epochs=2,
    )
    run = params_to_config(hyperparams_to_params(hyper, "m2"), cfg)
    assert run.params == hyper and run.model.name_or_path == "m2"


def test_alpha_off_means_no_alpha_params() -> None:
    raw = {**RAW, "space": {"focal_alpha": None}}
    cfg = parse_study_config(raw, "c.yaml")
    trial = optuna.create_study().ask()
    assert suggest(trial, cfg).params.focal_alpha is None
    assert not any(name.startswith("focal_alpha") for name in trial.params)
