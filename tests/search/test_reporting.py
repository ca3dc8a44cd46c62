"""The trial reporter on real SQLite studies: PNG artifacts, dashboard notes, failure policy.

Trials run through the worker's ``run_trial`` with the real objective (``make_objective``: the
search space, reports, pruning, best-evaluation attributes, the reporter as its hook); only
``train_model`` is replaced (``drawn_training`` in conftest): its evaluation records carry
real ``classification_metrics`` of real nsmc4 labels with drawn (seeded) logits, so a trial
takes milliseconds. One slow test runs the real `focaltune worker` end to end.
"""

from __future__ import annotations

import shutil

import optuna
import pytest
import yaml
from optuna.artifacts import download_artifact, get_all_artifact_meta
from optuna.trial import TrialState
from optuna_dashboard._note import get_note_from_system_attrs

from search.reporting import ReportingError, artifact_dir, make_trial_reporter, wandb_dir
from storage import open_storage
from tests.search.conftest import eval_records, finished_study, focaltune, run_trials, study_config
from trainer.errors import BadInput
from trainer.train import NonFiniteLoss

PNG = b"\x89PNG\r\n\x1a\n"


def note_of(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return get_note_from_system_attrs(attrs, trial._trial_id)["body"]


def test_artifacts_and_notes_of_a_completed_and_a_pruned_trial(tmp_path, nsmc_csv) -> None:
    url = f"sqlite:///{tmp_path / 'runs' / 'study.db'}"
    cfg = study_config(nsmc_csv(300))
    study = finished_study(url, cfg)
    folder = tmp_path / "runs" / "study-artifacts"
    assert artifact_dir(cfg, url) == folder
    complete, pruned = study.trials
    assert (complete.state, pruned.state) == (TrialState.COMPLETE, TrialState.PRUNED)
    for trial in (complete, pruned):
        metas = get_all_artifact_meta(trial, storage=study._storage)
        assert sorted(m.filename for m in metas) == [
            f"trial-{trial.number}-class-distribution.png",
            f"trial-{trial.number}-confusion.png",
        ]
        for meta in metas:
            assert (folder / meta.artifact_id).read_bytes()[:8] == PNG
            copy = tmp_path / f"{meta.artifact_id}.png"
            download_artifact(
                artifact_store=optuna.artifacts.FileSystemArtifactStore(folder),
                artifact_id=meta.artifact_id,
                file_path=str(copy),
            )
            assert copy.stat().st_size > 5_000
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left

    records = eval_records([0.2, 0.6, 0.4], seed=0)
    assert complete.value == max(r.accuracy for r in records)  # the objective's return value
    note = note_of(study, complete)
    accuracies = [f"{r.accuracy:.4f}" for r in records]
    assert all(a in note for a in accuracies)
    assert f"| 2 **best** | 1.00 | {accuracies[1]}" in note  # the best evaluation is marked
    assert f"focal gamma | {complete.params['focal_gamma']:.3f}" in note
    assert "매우 부정" in note and "Ended: completed." in note
    assert "| 3 | 1.50 |" in note  # the completed trial's third evaluation row
    assert "Ended: pruned at evaluation 2." in note_of(study, pruned)
    assert "| 3 | 1.50 |" not in note_of(study, pruned)  # pruned before its third evaluation


def test_an_unexpected_error_is_named_in_the_note(tmp_path, nsmc_csv) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = study_config(nsmc_csv(300))
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=None))
    reporter = make_trial_reporter(study, cfg, url)
    run_trials(
        study, cfg, reporter, [0.3], error=ValueError("tokenizer exploded"), catch=(ValueError,)
    )
    trial = study.trials[0]
    assert trial.state == TrialState.FAIL
    assert "failed: ValueError: tokenizer exploded" in note_of(study, trial)
    assert len(get_all_artifact_meta(trial, storage=study._storage)) == 2


def test_a_diverged_trial_fails_with_the_objectives_reason_and_keeps_its_best_metrics(
    tmp_path, nsmc_csv
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = study_config(nsmc_csv(300))
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=None))
    reporter = make_trial_reporter(study, cfg, url)
    error = NonFiniteLoss("loss is nan at step 7")
    run_trials(study, cfg, reporter, [0.2, 0.6], error=error, catch=(NonFiniteLoss,))
    trial = study.trials[0]
    records = eval_records([0.2, 0.6], seed=0)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["end_reason"] == "failed: diverged: loss is nan at step 7"
    assert trial.user_attrs["accuracy"] == records[1].accuracy  # the better evaluation
    assert trial.user_attrs["best_eval_index"] == 2
    assert trial.user_attrs["accuracy_curve"] == [round(r.accuracy, 5) for r in records]
    assert "Ended: failed: diverged: loss is nan at step 7." in note_of(study, trial)


def test_an_artifact_write_failure_fails_that_trial_and_the_next_one_runs(
    tmp_path, nsmc_csv
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = study_config(nsmc_csv(300), artifacts=str(tmp_path / "store"))
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=None))
    reporter = make_trial_reporter(study, cfg, url)
    # The store's folder becomes a plain file: every write there fails with an OSError.
    shutil.rmtree(tmp_path / "store")
    (tmp_path / "store").write_text("not a folder")
    run_trials(study, cfg, reporter, [0.5], catch=(ReportingError,))
    (tmp_path / "store").unlink()
    (tmp_path / "store").mkdir()  # space again: the worker's next trial succeeds
    run_trials(study, cfg, reporter, [0.5], catch=(ReportingError,))

    failed, ok = study.trials
    assert failed.state == TrialState.FAIL and ok.state == TrialState.COMPLETE
    assert failed.user_attrs["end_reason"].startswith("failed: artifact write: ")
    assert "failed: artifact write" in note_of(study, failed)
    assert len(get_all_artifact_meta(ok, storage=study._storage)) == 2


def test_a_trial_already_failing_keeps_its_own_reason(tmp_path, nsmc_csv) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = study_config(nsmc_csv(300), artifacts=str(tmp_path / "store"))
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=None))
    reporter = make_trial_reporter(study, cfg, url)
    shutil.rmtree(tmp_path / "store")
    (tmp_path / "store").write_text("not a folder")
    error = ArithmeticError("loss is nan")
    run_trials(study, cfg, reporter, [0.5], error=error, catch=(ArithmeticError,))
    assert "failed: ArithmeticError: loss is nan" in note_of(study, study.trials[0])


def test_an_interrupted_trial_gets_a_note_and_the_interrupt_goes_on(tmp_path, nsmc_csv) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = study_config(nsmc_csv(300))
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=None))
    reporter = make_trial_reporter(study, cfg, url)
    with pytest.raises(KeyboardInterrupt):
        run_trials(study, cfg, reporter, [0.5], error=KeyboardInterrupt("SIGTERM"))
    trial = study.trials[0]
    assert "Ended: interrupted: SIGTERM." in note_of(study, trial)
    assert get_all_artifact_meta(trial, storage=study._storage) == []  # stop promptly


def test_an_artifact_folder_that_cannot_be_made_is_bad_input(tmp_path, nsmc_csv) -> None:
    (tmp_path / "a-file").write_text("in the way")
    cfg = study_config(nsmc_csv(300), artifacts=str(tmp_path / "a-file" / "art"))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=None))
    with pytest.raises(BadInput, match=r"tracking.artifacts: cannot create .*a-file/art"):
        make_trial_reporter(study, cfg, url)


def test_default_folders_sit_beside_the_sqlite_file_or_in_the_working_folder(
    tmp_path, nsmc_csv, monkeypatch
) -> None:
    cfg = study_config(nsmc_csv(300))
    url = f"sqlite:///{tmp_path / 'db' / 'focaltune.db'}"
    assert artifact_dir(cfg, url) == tmp_path / "db" / "focaltune-artifacts"
    assert wandb_dir(cfg, url) == tmp_path / "db"
    monkeypatch.chdir(tmp_path)
    pg = "postgresql+psycopg://u:pw@127.0.0.1/db"
    assert artifact_dir(cfg, pg) == tmp_path / "focaltune-artifacts"
    custom = study_config(nsmc_csv(300), artifacts="art", wandb={"enabled": True, "dir": "wb"})
    assert (artifact_dir(custom, pg), wandb_dir(custom, pg)) == (tmp_path / "art", tmp_path / "wb")


@pytest.mark.slow
@pytest.mark.process
def test_a_real_worker_leaves_artifacts_notes_and_wandb_runs(tmp_path, write_config) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    config = write_config(
        "e2e",
        storage=url,
        study={"name": "e2e", "n_trials": 2, "pruner": {"type": "none"}},
        data={"max_train_samples": 96, "max_eval_samples": 64},
        space={"epochs": [1, 1]},
    )
    raw = yaml.safe_load(config.read_text())
    raw["tracking"] = {"wandb": {"enabled": True, "mode": "offline"}}
    config.write_text(yaml.safe_dump(raw))
    assert focaltune("study", "create", str(config)).returncode == 0
    run = focaltune("worker", "--storage", url, "--study", "e2e", env={"WANDB_SILENT": "true"})
    assert run.returncode == 0, run.stderr[-2000:]
    study = optuna.load_study(study_name="e2e", storage=url)
    assert len(study.trials) == 2
    for trial in study.trials:
        assert len(get_all_artifact_meta(trial, storage=study._storage)) == 2
        assert f"## Trial {trial.number}: completed" in note_of(study, trial)
    assert len(list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))) == 2
