"""Every private name of Optuna, optuna-dashboard and transformers the product relies on.

There is no public API for these (each use site says why); an upgrade that renames or
reshapes one must fail here, loudly, instead of quietly switching off what it serves:
outage tolerance, the death-before-heartbeat check, a stale or interrupted trial's failure
and retry in one transaction, fast dashboard notes, one-transaction user attributes, in-order
evaluation, length-grouped batches from the cached lengths and the masks of a resumed MLM
pretraining.
"""

from __future__ import annotations

import importlib
import inspect

import optuna
import pytest

SIGNATURES = [
    # storage/outage.py wraps these (repeatable reads and upserts) to wait out an outage.
    ("optuna.storages", "RDBStorage._get_trials",
     ["self", "study_id", "states", "included_trial_ids", "trial_id_greater_than"]),
    ("optuna.storages", "RDBStorage._get_best_trial_id", ["self", "study_id", "direction"]),
    ("optuna.storages", "RDBStorage._get_stale_trial_ids", ["self", "study_id"]),  # stale_trial_ids
    ("optuna.storages", "RDBStorage._set_trial_param",
     ["self", "trial_id", "param_name", "param_value_internal", "distribution",
      "previous_distribution"]),
    # storage/stale.py queries trials that never beat, and fails a stale trial and inserts
    # its retry in one transaction: Optuna's locks, its insert and its reading of a trial.
    ("optuna.storages._rdb.storage", "_create_scoped_session",
     ["scoped_session", "ignore_integrity_error"]),
    ("optuna.storages._rdb.models", "StudyModel.find_or_raise_by_id",
     ["study_id", "session", "for_update"]),
    ("optuna.storages._rdb.models", "TrialModel.find_or_raise_by_id",
     ["trial_id", "session", "for_update"]),
    ("optuna.storages", "RDBStorage._get_prepared_new_trial",
     ["self", "study_id", "template_trial", "session"]),
    ("optuna.storages", "RDBStorage._build_frozen_trial_from_trial_model", ["self", "trial"]),
    ("optuna.storages", "RetryHeartbeatStaleTrialCallback.__init__",
     ["self", "max_retry", "inherit_intermediate_values"]),
    # search/trial_run.py runs a trial with study.optimize's heartbeat thread, so that an
    # interrupted trial stays RUNNING until its failure and retry are one transaction.
    ("optuna.storages._heartbeat", "get_heartbeat_thread", ["trial_id", "storage"]),
    # storage/rdb.py checks the schema's revision one connection at a time (PgBouncer).
    ("optuna.storages._rdb.storage", "_VersionManager.get_current_version", ["self"]),
    ("optuna.storages._rdb.storage", "_VersionManager.get_head_version", ["self"]),
    # storage/attrs.py: a trial's user attributes in one transaction.
    ("optuna.storages", "RDBStorage._set_trial_attr_without_commit",
     ["self", "session", "model_cls", "trial_id", "key", "value"]),
    ("optuna.storages", "RDBStorage.check_trial_is_updatable", ["self", "trial_id", "trial_state"]),
    # search/notes.py writes a trial's note without reading the study's notes.
    ("optuna_dashboard._note", "note_ver_key", ["trial_id"]),
    ("optuna_dashboard._note", "split_body", ["note_str", "trial_id"]),
    # search/reporting.py: artifacts written atomically where Optuna's store reads them.
    ("optuna.artifacts", "FileSystemArtifactStore._get_filepath", ["self", "artifact_id"]),
    # trainer/train.py: the Trainer's sampler seams.
    ("transformers", "Trainer._get_eval_sampler", ["self", "eval_dataset"]),
    ("transformers", "Trainer._get_train_sampler", ["self", "train_dataset"]),
    # trainer/backbone/checkpoint.py: a resumed MLM run makes the collator's seeded
    # generator (its `generator` attribute) now, to set its saved state.
    ("transformers", "DataCollatorForLanguageModeling.create_rng", ["self", "return_tensors"]),
]  # fmt: skip


def resolve(module: str, dotted: str) -> object:
    obj = importlib.import_module(module)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(("module", "name", "parameters"), SIGNATURES)
def test_private_callables_keep_their_signature(module, name, parameters) -> None:
    assert list(inspect.signature(resolve(module, name)).parameters) == parameters


def test_the_trial_model_columns_stale_py_filters_on() -> None:
    from optuna.storages._rdb.models import TrialModel
    from sqlalchemy.orm import configure_mappers

    configure_mappers()  # `heartbeats` is a backref: it exists once the mappers are set up
    for column in ("trial_id", "study_id", "state", "_datetime_start_utc", "heartbeats"):
        assert hasattr(TrialModel, column), column


def test_the_user_attribute_table_attrs_py_upserts_into(tmp_path) -> None:
    from optuna.storages._rdb.models import TrialModel
    from optuna.storages._rdb.models import TrialUserAttributeModel as table

    assert callable(TrialModel.find_or_raise_by_id)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'attrs.db'}")
    trial = study.ask()
    # A study's RDBStorage sits behind a cache; a trial keeps its own frozen copy.
    assert isinstance(study._storage._backend, optuna.storages.RDBStorage)
    assert isinstance(trial._cached_frozen_trial.user_attrs, dict)

    for column in ("trial_id", "key", "value_json"):
        assert hasattr(table, column), column
    unique = {tuple(c.name for c in u.columns) for u in table.__table__.constraints if u.columns}
    assert ("trial_id", "key") in unique  # what ON CONFLICT names


def test_trial_and_study_ids_notes_py_reads(tmp_path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'ids.db'}")
    trial = optuna.create_study(storage=storage).ask()
    assert isinstance(trial._trial_id, int) and isinstance(trial.study._study_id, int)
    assert callable(storage.scoped_session)  # the session factory stale.py opens


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_retry_callback_settings_stale_py_reads() -> None:
    # storage/stale.py applies the callback's rule itself, inside its transaction.
    callback = optuna.storages.RetryHeartbeatStaleTrialCallback(3, inherit_intermediate_values=True)
    assert callback._max_retry == 3 and callback._inherit_intermediate_values is True
    assert optuna.storages.RetryHeartbeatStaleTrialCallback()._max_retry is None
