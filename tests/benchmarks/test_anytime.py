"""Part 1's arithmetic: the anytime curve, the budget, time-to-target and the targets."""

from __future__ import annotations

from datetime import datetime, timedelta

import optuna
import pytest
from optuna.distributions import FloatDistribution

from benchmarks.anytime import AnytimeRun, Finished, from_study, summary
from benchmarks.report import targets

P = {"focal_gamma": 1.0}


def run(name: str, *trials: tuple[float, float, str]) -> AnytimeRun:
    return AnytimeRun(name, 100.0, [Finished(s, a, P, state) for s, a, state in trials])


def test_the_curve_is_the_running_best_inside_the_budget() -> None:
    r = run("a", (30, 0.55, "COMPLETE"), (10, 0.50, "PRUNED"), (50, 0.52, "COMPLETE"),
            (90, 0.60, "STOPPED"), (120, 0.70, "COMPLETE"))  # fmt: skip
    assert r.curve(100) == [(10, 0.50), (30, 0.55)]  # STOPPED and late trials do not count
    assert r.best(100).accuracy == 0.55 and r.best(200).accuracy == 0.70
    assert r.time_to(0.55, 100) == 30 and r.time_to(0.56, 100) is None
    figures = r.to_json(100)
    assert (figures["trials_finished"], figures["trials_over_budget"]) == (3, 2)


def test_time_to_target_is_measured_from_the_best_any_peer_reached() -> None:
    fast = run("focaltune", (20, 0.58, "PRUNED"), (60, 0.61, "COMPLETE"))
    slow = run("seed-style", (80, 0.585, "COMPLETE"))
    never = run("hf-hyperparameter-search", (40, 0.50, "COMPLETE"))
    out = summary([fast, slow, never], 100)
    assert out["target_accuracy"] == pytest.approx(0.605)
    peers = out["peers"]
    assert peers["focaltune"]["time_to_target_seconds"] == 60
    assert peers["seed-style"]["time_to_target_seconds"] is None
    found = {t["target"]: t for t in targets({"search": out})}
    # A peer that never reached the target counts the whole budget: a lower bound.
    assert found["time-to-target seed-style / focaltune >= 4"]["measured"] == pytest.approx(
        100 / 60
    )
    assert found["time-to-target seed-style / focaltune >= 4"]["met"] is False


def test_a_focaltune_that_never_reaches_the_target_is_missed_not_dropped() -> None:
    out = summary(
        [run("focaltune", (20, 0.5, "COMPLETE")), run("seed-style", (9, 0.6, "COMPLETE"))], 100
    )
    [ratio] = [t for t in targets({"search": out}) if t["target"].startswith("time-to-target")]
    assert ratio["met"] is False and ratio["measured"] is None


def test_a_study_trial_counts_with_its_best_evaluation_at_its_end() -> None:
    start = datetime(2026, 12, 1, 12, 0, 0)
    study = optuna.create_study(direction="maximize")
    dist = {"focal_gamma": FloatDistribution(0, 5)}
    pruned = optuna.trial.create_trial(
        params=P, distributions=dist, state=optuna.trial.TrialState.PRUNED,
        intermediate_values={1: 0.4, 2: 0.45},
    )  # fmt: skip
    study.add_trial(pruned)
    study.add_trial(optuna.trial.create_trial(params=P, distributions=dist, value=0.5))
    trials = study.get_trials()
    for t, seconds in zip(trials, (12, 30), strict=True):  # stamp the finish times
        t.datetime_complete = start + timedelta(seconds=seconds)
    finished = from_study(trials, start)
    assert [(f.seconds, f.accuracy, f.state) for f in finished] == [
        (12, 0.45, "PRUNED"),
        (30, 0.5, "COMPLETE"),
    ]
