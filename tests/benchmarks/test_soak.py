"""The soak's verdict on a study's trials: what counts as lost and what does not."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from benchmarks.soak import check

X, Y = FloatDistribution(0, 1), FloatDistribution(0, 1)


def study_of(killed_params: dict, retry_params: dict, extra_finished: int = 0) -> list:
    """Trial 0 COMPLETE, trial 1 killed (FAIL, no end reason), trial 2 its retry."""
    study = optuna.create_study()
    dists = {"x": X, "y": Y}
    study.add_trial(create_trial(value=0.5, params={"x": 0.1, "y": 0.2}, distributions=dists))
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params=killed_params,
            distributions={k: dists[k] for k in killed_params},
        )
    )
    study.add_trial(
        create_trial(
            value=0.6,
            params=retry_params,
            distributions=dists,
            system_attrs={"retry_history": [1]},
        )
    )
    for _ in range(extra_finished):
        study.add_trial(create_trial(value=0.4, params={"x": 0.5, "y": 0.5}, distributions=dists))
    return study.get_trials()


def test_a_retry_that_completes_what_a_killed_sampler_began_is_not_a_loss() -> None:
    # Killed while the sampler was choosing: only x was chosen; the retry keeps x.
    figures, problems = check(study_of({"x": 0.3}, {"x": 0.3, "y": 0.9}), budget=2)
    assert problems == []
    assert figures["killed trials"] == 1 and figures["retries"] == 1


def test_a_retry_with_another_value_or_an_overshoot_is_a_violation() -> None:
    _, problems = check(study_of({"x": 0.3, "y": 0.2}, {"x": 0.4, "y": 0.2}), budget=2)
    assert len(problems) == 1 and "other parameters" in problems[0]
    _, problems = check(study_of({"x": 0.3}, {"x": 0.3, "y": 0.9}, extra_finished=1), budget=2)
    assert problems == ["3 finished trials, budget 2"]
