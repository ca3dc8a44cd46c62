"""`focaltune dashboard` as a real process, checked over real HTTP (urllib).

The studies are real SQLite studies whose trials were reported by the real reporter
(``finished_study`` in conftest), so the artifacts served are the PNG files the workers
wrote. Tests that need the dashboard running are marked ``process``; the command's refusals
run in-process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta

from search.cli import main
from search.dashboard import is_loopback
from search.reporting import make_trial_reporter
from storage import open_storage
from tests.search.conftest import (
    finished_study,
    get,
    get_json,
    run_trials,
    start_dashboard,
    study_config,
    study_ids,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory, nsmc_csv) -> Iterator[dict]:
    """Two finished studies in one SQLite file (one with its own artifact folder), served."""
    root = tmp_path_factory.mktemp("dash")
    url = f"sqlite:///{root / 'study.db'}"
    finished_study(url, study_config(nsmc_csv(300)))
    custom = study_config(nsmc_csv(300), name="custom", artifacts=str(root / "elsewhere"))
    finished_study(url, custom)
    proc, base, line = start_dashboard(env={"FOCALTUNE_STORAGE": url})  # URL from the env
    yield {"url": url, "base": base, "root": root, "line": line, "train": nsmc_csv(300)}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.process
def test_binds_loopback_by_default(served) -> None:
    assert served["base"].startswith("127.0.0.1:")
    assert str(served["root"] / "study.db") in served["line"]


@pytest.mark.process
def test_serves_the_studies_their_trials_notes_and_artifact_files(served) -> None:
    base, root = served["base"], served["root"]
    ids = study_ids(base)
    assert {"watch", "custom"} <= set(ids)
    for name, folder in (("watch", root / "study-artifacts"), ("custom", root / "elsewhere")):
        detail = get_json(base, f"/api/studies/{ids[name]}")
        trials = detail["trials"]
        assert [t["state"] for t in trials] == ["Complete", "Pruned"]
        assert "Ended: completed." in trials[0]["note"]["body"]
        assert "Ended: pruned at evaluation 2." in trials[1]["note"]["body"]
        for trial in trials:
            assert len(trial["artifacts"]) == 2
            for meta in trial["artifacts"]:
                path = f"/artifacts/{ids[name]}/{trial['trial_id']}/{meta['artifact_id']}"
                status, kind, body = get(base, path)
                assert (status, kind) == (200, "image/png")
                assert body == (folder / meta["artifact_id"]).read_bytes()


@pytest.mark.process
def test_the_dashboard_page_is_served(served) -> None:
    status, kind, body = get(served["base"], "/dashboard")
    assert status == 200 and kind.startswith("text/html")
    assert b"<script" in body


@pytest.mark.process
def test_a_study_created_after_start_has_its_artifacts_served(served, tmp_path) -> None:
    cfg = study_config(served["train"], name="later", artifacts=str(tmp_path / "later-art"))
    study = finished_study(served["url"], cfg)
    trial = study.trials[0]
    meta = get_all_artifact_meta(trial, storage=study._storage)[0]
    sid = study_ids(served["base"])["later"]
    _, _, body = get(served["base"], f"/artifacts/{sid}/{trial._trial_id}/{meta.artifact_id}")
    assert body == (tmp_path / "later-art" / meta.artifact_id).read_bytes()


@pytest.mark.process
def test_reading_does_not_disturb_a_running_worker(served) -> None:
    url, base = served["url"], served["base"]
    cfg = study_config(served["train"], name="busy")
    storage = open_storage(url, heartbeat_interval=5, grace_period=30)  # as a worker opens it
    study = optuna.create_study(
        study_name="busy",
        storage=storage,
        direction="maximize",
        pruner=optuna.pruners.NopPruner(),  # all 12 trials write every evaluation
    )
    reporter = make_trial_reporter(study, cfg, url)
    sid = study_ids(base)["busy"]
    reads, errors, stop = [], [], threading.Event()

    def poll() -> None:  # the dashboard's browser polls the study while trials are written
        while not stop.is_set():
            try:
                reads.append(len(get_json(base, f"/api/studies/{sid}")["trials"]))
            except Exception as err:  # collected and asserted on below
                errors.append(err)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        run_trials(study, cfg, reporter, [0.3, 0.5], n_trials=12)
    finally:
        stop.set()
        poller.join(timeout=60)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 12
    assert errors == [] and len(reads) >= 3 and reads == sorted(reads)


def test_a_missing_sqlite_file_is_bad_input(tmp_path, capsys) -> None:
    assert main(["dashboard", "--storage", f"sqlite:///{tmp_path / 'nope.db'}"]) == 2
    err = capsys.readouterr().err
    assert "nope.db not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nope.db").exists()


def test_an_unreachable_server_is_bad_input_without_the_password(capsys, monkeypatch) -> None:
    monkeypatch.setenv("FOCALTUNE_STORAGE", "postgresql+psycopg://u:hunter2-secret@127.0.0.1:1/db")
    assert main(["dashboard"]) == 2
    out, err = capsys.readouterr()
    assert "127.0.0.1" in err and "hunter2-secret" not in out + err


@pytest.mark.process
def test_listening_beyond_loopback_warns(served) -> None:
    proc, base, _ = start_dashboard("--host", "0.0.0.0", "--storage", served["url"])
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    assert base.startswith("0.0.0.0:")
    assert "no authentication" in stderr and "can delete studies" in stderr


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.3.2.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.org"]))


@pytest.mark.postgres
@pytest.mark.process
def test_serves_a_postgresql_study_and_never_shows_the_password(
    postgres, postgres_url, nsmc_csv, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # PostgreSQL's default artifact folder is ./focaltune-artifacts
    finished_study(postgres_url, study_config(nsmc_csv(300), name="pg"))
    proc, base, line = start_dashboard("--storage", postgres_url, cwd=tmp_path)
    try:
        sid = study_ids(base)["pg"]
        trial = get_json(base, f"/api/studies/{sid}")["trials"][0]
        meta = trial["artifacts"][0]
        _, _, body = get(base, f"/artifacts/{sid}/{trial['trial_id']}/{meta['artifact_id']}")
        assert body == (tmp_path / "focaltune-artifacts" / meta["artifact_id"]).read_bytes()
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=30)
    assert postgres.password not in line + stdout + stderr
