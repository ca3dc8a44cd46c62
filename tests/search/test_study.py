"""Creating studies: idempotent, refuses a different config, nothing half-made."""

from __future__ import annotations

import shutil

import optuna
import pytest
import yaml

from search.config import load_study_config
from search.study import CONFIG_ATTR, create_study, stored_config
from storage import open_storage
from tests.search.conftest import focaltune


def test_create_is_idempotent_and_stores_the_config(write_config, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    cfg = load_study_config(write_config("s1", study={"enqueue": [{"focal_gamma": 2.965}]}))
    storage = open_storage(url, heartbeat_interval=None)
    first = create_study(cfg, storage)
    again = create_study(cfg, storage)
    assert first._study_id == again._study_id
    assert len(optuna.get_all_study_names(storage)) == 1
    stored = stored_config(again)
    assert stored.data.labels == ["0", "1", "2", "3"]  # resolved from the data
    assert stored.study.storage is None  # a URL (maybe with a password) is never stored
    waiting = again.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].system_attrs["fixed_params"] == {"focal_gamma": 2.965}


@pytest.mark.process
def test_different_config_is_refused_with_the_difference(write_config, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert focaltune("study", "create", str(write_config("s2")), "--storage", url).returncode == 0
    changed = write_config("s2", space={"epochs": [1, 3]})
    result = focaltune("study", "create", str(changed), "--storage", url)
    assert result.returncode == 2
    assert "space.epochs.high: 2 -> 3" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.process
def test_bad_data_leaves_no_study(write_config, tmp_path) -> None:
    db = tmp_path / "s.db"
    path = write_config("s3", data={"text_column": "nope"})
    result = focaltune("study", "create", str(path), "--storage", f"sqlite:///{db}")
    assert result.returncode == 2 and "nope" in result.stderr
    assert "Traceback" not in result.stderr
    if db.exists():
        assert optuna.get_all_study_names(f"sqlite:///{db}") == []


def test_stored_config_is_yaml_friendly(write_config, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = create_study(
        load_study_config(write_config("s4")), open_storage(url, heartbeat_interval=None)
    )
    yaml.safe_dump(study.user_attrs[CONFIG_ATTR])  # plain data, readable by any tool


def test_random_sampler_is_the_ablation_choice(write_config) -> None:
    from search.study import make_sampler

    cfg = load_study_config(write_config("s5", study={"sampler": {"type": "random", "seed": 3}}))
    sampler = make_sampler(cfg, worker_index=1)
    assert isinstance(sampler, optuna.samplers.RandomSampler)
    tpe = make_sampler(load_study_config(write_config("s6")), worker_index=1)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    # Seeded per worker like TPE: two workers of one study draw different first trials.
    draws = [
        optuna.create_study(sampler=make_sampler(cfg, k)).ask().suggest_float("x", 0, 1)
        for k in (0, 1, 0)
    ]
    assert draws[0] == draws[2] != draws[1]


def test_relative_backbone_folders_are_stored_absolute(
    write_config, tiny_backbone, tmp_path, monkeypatch
) -> None:
    # Workers start elsewhere (a Slurm job's folder, a pod): a backbone given relative to
    # where `study create` ran must name the same folder for them.
    shutil.copytree(tiny_backbone, tmp_path / "bb")
    monkeypatch.chdir(tmp_path)
    path = write_config(
        "s5", model={"name_or_path": "bb"}, space={"backbones": ["bb", str(tiny_backbone)]}
    )
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=None)
    stored = stored_config(create_study(load_study_config(path), storage))
    here = str((tmp_path / "bb").resolve())
    assert stored.model.name_or_path == here
    assert stored.space.backbones == [here, str(tiny_backbone.resolve())]
