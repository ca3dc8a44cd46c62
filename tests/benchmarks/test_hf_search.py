"""The transformers peer really searches the focal settings: each trial trains with its own."""

from __future__ import annotations

import pytest

import benchmarks.hf_search as hf
from search.config import parse_study_config
from search.study import resolve_config


@pytest.mark.slow
def test_each_trial_trains_with_its_own_focal_settings(
    tiny_backbone, nsmc_csv, tmp_path, monkeypatch
) -> None:
    raw = {
        "study": {"name": "hf"},
        "data": {
            "train": str(nsmc_csv(200)),
            "validation": str(nsmc_csv(60, offset=5000)),
            "max_length": 32,
            "cache_dir": str(tmp_path / "cache"),
        },
        "model": {"name_or_path": str(tiny_backbone)},
        "train": {"batch_size": 32},
        "space": {"learning_rate": [1e-3, 5e-3], "epochs": [1, 1]},
    }
    base = resolve_config(parse_study_config(raw, "test config"))
    seen: set[tuple[float, float, tuple[float, ...]]] = set()

    def spy(logits, labels, **kw):
        seen.add((kw["gamma"], kw["label_smoothing"], tuple(kw["alpha"].tolist())))
        return real(logits, labels, **kw)

    real = hf.focal_loss
    monkeypatch.setattr(hf, "focal_loss", spy)
    run = hf.run_hf_search(base, tmp_path / "hf", budget_seconds=600, n_trials=3)
    assert len(run.trials) == 3
    gammas = {g for g, _, _ in seen}
    for trial in run.trials:
        assert trial.params["focal_gamma"] in gammas  # the loss saw this trial's gamma
    assert len({(g, s) for g, s, _ in seen}) == len(run.trials)  # one setting per trial
