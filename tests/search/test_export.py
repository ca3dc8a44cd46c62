"""Export: which trials become the final config's members, and with which seeds."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from search.export import export_final
from tests.search.conftest import study_config

SPACE = {
    "focal_gamma": FloatDistribution(0.0, 5.0),
    "label_smoothing": FloatDistribution(0.0, 0.3),
    "learning_rate": FloatDistribution(1e-5, 1e-2, log=True),
    "epochs": IntDistribution(1, 4),
}


@pytest.fixture
def study_with_trials(nsmc_csv):
    """A study with four COMPLETE trials of accuracy 0.60, 0.66, 0.63 and 0.61."""
    cfg = study_config(nsmc_csv(200), name="exp")
    study = optuna.create_study(direction="maximize")
    for number, value in enumerate((0.60, 0.66, 0.63, 0.61)):
        params = {"focal_gamma": number, "label_smoothing": 0.1, "learning_rate": 1e-3}
        trial = optuna.trial.create_trial(
            params=params | {"epochs": 2}, distributions=SPACE, value=value
        )
        study.add_trial(trial)
    return study, cfg


def test_top_k_takes_the_k_best_trials(study_with_trials) -> None:
    final = export_final(*study_with_trials, top_k=2)
    assert [m.source_trial for m in final.members] == [1, 2]
    assert [m.params.focal_gamma for m in final.members] == [1.0, 2.0]


@pytest.mark.parametrize("seeds", [None, 3])
def test_seeds_repeats_the_best_trial_with_a_seed_each(study_with_trials, seeds) -> None:
    final = export_final(*study_with_trials, seeds=seeds)  # None: the default, 3
    assert [m.source_trial for m in final.members] == [1, 1, 1]
    assert len({m.seed for m in final.members}) == 3
    assert {m.params.model_dump_json() for m in final.members} == {
        final.members[0].params.model_dump_json()
    }
    assert final.provenance["trials"] == [1, 1, 1]


def test_data_stages_stay_with_the_search(study_with_trials) -> None:
    study, cfg = study_with_trials
    cfg.train.data_stages = [0.25, 0.5]
    final = export_final(study, cfg)
    assert final.train.data_stages == []  # final members train whole epochs
    assert cfg.train.data_stages == [0.25, 0.5]  # the study's config is left as it was
