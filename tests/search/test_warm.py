"""Warm start: another study's best configurations, mapped onto this space, tried first."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from search.cli import main
from search.config import parse_study_config
from search.space import suggest
from search.study import stored_config
from search.warm import map_params
from storage import open_storage

SOURCE_SPACE = {
    "focal_gamma": FloatDistribution(0.0, 5.0),
    "label_smoothing": FloatDistribution(0.0, 0.3),
    "learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
    "epochs": IntDistribution(1, 8),
    "backbone": CategoricalDistribution(["old-backbone"]),
}


def source_study(url: str) -> None:
    """An earlier study on another backbone, searched over a wider space: three COMPLETE
    trials (accuracy 0.61, 0.66, 0.64) and a FAIL."""
    study = optuna.create_study(study_name="old", storage=url, direction="maximize")
    rows = [(0.61, 1e-3, 2), (0.66, 2e-2, 6), (0.64, 1e-3, 1)]
    for gamma, (value, lr, epochs) in enumerate(rows):
        params = {"focal_gamma": float(gamma), "label_smoothing": 0.1, "learning_rate": lr}
        params |= {"epochs": epochs, "backbone": "old-backbone"}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=SOURCE_SPACE, value=value)
        )
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))


def test_the_best_configurations_are_enqueued_clipped_and_tried_first(
    write_config, tmp_path, capfd
) -> None:
    old, new = f"sqlite:///{tmp_path / 'old.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    source_study(old)
    config = write_config("new")  # space: learning rate [5e-4, 5e-3], epochs [1, 2]
    args = ["study", "create", str(config), "--storage", new, "--warm-start", "old"]
    assert main([*args, "--warm-start-storage", old, "--warm-start-top", "2"]) == 0
    err = capfd.readouterr().err
    assert "learning_rate=0.02 clipped to 0.005" in err and "epochs=6 clipped to 2" in err
    assert "backbone='old-backbone' dropped (not in this study's space)" in err
    study = optuna.load_study(study_name="new", storage=open_storage(new, heartbeat_interval=None))
    waiting = [t.system_attrs["fixed_params"] for t in study.get_trials()]
    assert waiting == [
        {"focal_gamma": 1.0, "label_smoothing": 0.1, "learning_rate": 5e-3, "epochs": 2},
        {"focal_gamma": 2.0, "label_smoothing": 0.1, "learning_rate": 1e-3, "epochs": 1},
    ]
    first = study.ask()  # a worker's next trial: the best old configuration, clipped
    suggest(first, stored_config(study))
    assert {name: first.params[name] for name in waiting[0]} == waiting[0]
    assert "focal_alpha_0" in first.params  # not searched by the old study: sampled


@pytest.mark.parametrize(
    ("name", "words"), [("nope", "'nope' not found"), ("empty", "no COMPLETE trial")]
)
def test_a_bad_warm_start_exits_2_and_creates_nothing(
    write_config, tmp_path, capsys, name, words
) -> None:
    old, new = f"sqlite:///{tmp_path / 'old.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    optuna.create_study(study_name="empty", storage=old)
    args = ["study", "create", str(write_config("new")), "--storage", new]
    assert main([*args, "--warm-start", name, "--warm-start-storage", old]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "--warm-start" in err[0]
    assert "new" not in optuna.get_all_study_names(open_storage(new, heartbeat_interval=None))


def test_a_relative_backbone_of_the_source_maps_to_this_studys_absolute_one(
    tmp_path, monkeypatch
) -> None:
    # Studies created before `study create` made backbone folders absolute hold them as given.
    (tmp_path / "bb").mkdir()
    monkeypatch.chdir(tmp_path)
    here = str((tmp_path / "bb").resolve())
    raw = {
        "study": {"name": "w"},
        "data": {"train": "t.csv", "labels": ["0", "1"]},
        "model": {"name_or_path": here},
        "space": {"backbones": [here, "hub/name"]},
    }
    cfg = parse_study_config(raw, "test")
    assert map_params({"backbone": "bb"}, cfg, "old")["backbone"] == here
    assert map_params({"backbone": "hub/name"}, cfg, "old")["backbone"] == "hub/name"
    assert "backbone" not in map_params({"backbone": "elsewhere"}, cfg, "old")
