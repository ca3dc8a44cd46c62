"""Dead trials are failed and retried, not kept: those that never beat, and, in one
transaction with their retry, those whose heartbeat stopped (real SQLite and PostgreSQL)."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from storage import open_storage
from storage.stale import fail_and_retry, fail_stale_trials
from tools.postgres import LocalPostgres

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT = {"heartbeat_interval": 1, "grace_period": 2, "max_retry": 3}
STALE_S = 3.0  # past the 2 s grace period
MARKER_TIMEOUT_S = 45.0  # the child's start and STALE_S, with room for a loaded machine
X = optuna.distributions.FloatDistribution(0, 1)

# A worker that makes a stale trial, then repairs it and stops half-way: the sleep point
# (write a marker, sleep `pause` s, go on) patched into the repairer is the only injection;
# databases, processes and the kill are real. "optuna": Optuna's fail_stale_trials, stopped
# in its retry callback (after the FAIL commit). "ours": storage.stale's, stopped in
# _get_prepared_new_trial (after the FAIL update, before the retry's insert). The marker
# holds the trial's state as the repairer sees it at that point.
CHILD = """
import pathlib, sys, time
import optuna
import storage.stale
from optuna.storages._rdb.models import TrialModel
from storage.rdb import open_storage

url, marker, repairer, pause = sys.argv[1:]
marker, pause = pathlib.Path(marker), float(pause)
if repairer == "optuna":  # Optuna's own storage: focaltune's shows Optuna's pass no stale trial
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    db = optuna.storages.RDBStorage(
        url, heartbeat_interval=1, grace_period=2, failed_trial_callback=retry
    )
else:
    db = open_storage(url, heartbeat_interval=1, grace_period=2, max_retry=3)
study = optuna.create_study(study_name="window", storage=db, direction="maximize")
trial_id = db.create_new_trial(study._study_id)
db.set_trial_param(trial_id, "x", 0.5, optuna.distributions.FloatDistribution(0, 1))
db.record_heartbeat(trial_id)
time.sleep(3.0)  # past the grace period: stale

if repairer == "optuna":
    owner, name = optuna.storages.RetryHeartbeatStaleTrialCallback, "__call__"
    seen = lambda args: db.get_trial(trial_id).state.name  # committed already
    repair = optuna.storages.fail_stale_trials
else:
    owner, name = optuna.storages.RDBStorage, "_get_prepared_new_trial"
    query = lambda session: session.query(TrialModel.state).filter_by(trial_id=trial_id)
    seen = lambda args: query(args[-1]).scalar().name  # inside the open transaction
    repair = storage.stale.fail_stale_trials
real = getattr(owner, name)

def stopped(*args, **kwargs):
    partial = marker.with_suffix(".part")
    partial.write_text(seen(args))
    partial.rename(marker)
    time.sleep(pause)
    return real(*args, **kwargs)

setattr(owner, name, stopped)
print(repair(study), flush=True)
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'stale.db'}"
    return request.getfixturevalue("postgres_url")


def start_child(url: str, marker: Path, repairer: str, pause: float) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", CHILD, url, str(marker), repairer, str(pause)]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_marker(child: subprocess.Popen[str], marker: Path) -> str:
    """The marker's text once the child reaches the sleep point (fails if it never does)."""
    deadline = time.monotonic() + MARKER_TIMEOUT_S
    while not marker.exists():
        if child.poll() is not None:
            pytest.fail(f"the child ended ({child.returncode}) early:\n{child.communicate()[1]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"no marker in {MARKER_TIMEOUT_S:.0f} s:\n{child.communicate()[1]}")
        time.sleep(0.1)
    return marker.read_text()


def kill_at_marker(child: subprocess.Popen[str], marker: Path) -> str:
    seen = wait_for_marker(child, marker)
    child.kill()  # SIGKILL: no cleanup, no rollback sent; as the OOM killer or preemption
    child.wait(timeout=30)
    return seen


def killed_half_way(url: str, tmp_path: Path, repairer: str) -> tuple[str, optuna.Study]:
    """The trial's state the child's repairer saw when it was killed, and the study after."""
    marker = tmp_path / "marker"
    seen = kill_at_marker(start_child(url, marker, repairer, pause=600), marker)
    return seen, optuna.load_study(study_name="window", storage=open_storage(url, **HEARTBEAT))


def states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials()]


def stale_trial(
    storage: optuna.storages.RDBStorage,
    study: optuna.Study,
    system_attrs: dict | None = None,
    beat: bool = True,
) -> int:
    """A RUNNING trial with a parameter, user attributes and intermediate values, whose one
    heartbeat (or none, ``beat=False``) is stale once STALE_S have passed."""
    trial_id = storage.create_new_trial(study._study_id)
    storage.set_trial_param(trial_id, "x", 0.25, X)
    storage.set_trial_user_attr(trial_id, "lr", 1e-4)
    for step, value in enumerate([0.5, 0.75]):
        storage.set_trial_intermediate_value(trial_id, step, value)
    for key, value in (system_attrs or {}).items():
        storage.set_trial_system_attr(trial_id, key, value)
    if beat:
        storage.record_heartbeat(trial_id)
    return trial_id


def test_a_trial_that_never_beat_is_failed_after_the_grace_period(url: str) -> None:
    storage = open_storage(url, heartbeat_interval=1, grace_period=2, max_retry=3)
    study = optuna.create_study(study_name="stale", storage=storage, direction="maximize")
    # What a worker killed inside study.ask() leaves: RUNNING, no heartbeat, params set.
    dead = storage.create_new_trial(study._study_id)
    storage.set_trial_param(dead, "x", 0.5, optuna.distributions.FloatDistribution(0, 1))
    live = storage.create_new_trial(study._study_id)
    storage.record_heartbeat(live)

    fail_stale_trials(study)
    assert storage.get_trial(dead).state == TrialState.RUNNING  # young: may still beat

    time.sleep(2.5)
    storage.record_heartbeat(live)
    fail_stale_trials(study)
    assert storage.get_trial(dead).state == TrialState.FAIL
    assert storage.get_trial(live).state == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.params for t in waiting] == [{"x": 0.5}]  # retried with the same params
    assert waiting[0].system_attrs["failed_trial"] == storage.get_trial(dead).number


def test_study_optimize_leaves_stale_trials_to_our_repair(url: str) -> None:
    # study.optimize runs Optuna's two-step pass before each trial; with focaltune's storage
    # it must find nothing, or the window below would stay open inside every worker's trial.
    storage = open_storage(url, **HEARTBEAT)
    study = optuna.create_study(study_name="stale", storage=storage, direction="maximize")
    dead = stale_trial(storage, study)
    time.sleep(STALE_S)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert storage.get_trial(dead).state == TrialState.RUNNING  # Optuna's pass left it
    assert fail_stale_trials(study) == [dead]  # ours: the failure and its retry at once
    assert sorted(t.state.name for t in study.get_trials()) == ["COMPLETE", "FAIL", "WAITING"]


@pytest.mark.process
def test_optunas_fail_stale_trials_loses_the_retry_of_a_worker_killed_half_way(
    url: str, tmp_path: Path
) -> None:
    # The bug this module fixes, shown with Optuna's own function: FAIL committed, then the
    # worker is killed before its retry callback adds the WAITING copy.
    seen, study = killed_half_way(url, tmp_path, "optuna")
    assert seen == "FAIL"
    assert states(study) == [TrialState.FAIL]  # no WAITING retry
    assert fail_stale_trials(study) == []  # and nothing will make one: it is not stale now
    assert states(study) == [TrialState.FAIL]


@pytest.mark.process
def test_a_worker_killed_half_way_through_ours_leaves_the_trial_running(
    url: str, tmp_path: Path
) -> None:
    seen, study = killed_half_way(url, tmp_path, "ours")
    assert seen == "FAIL"  # the child's transaction had made the trial FAIL when killed...
    [trial] = study.get_trials()  # the study's cache now holds it RUNNING
    assert trial.state == TrialState.RUNNING  # ...and it was rolled back with the connection
    assert fail_stale_trials(study) == [trial._trial_id]  # still stale: the next worker's
    original, retry = study.get_trials()  # through the cache, which re-read the trial
    assert (original.state, retry.state) == (TrialState.FAIL, TrialState.WAITING)
    assert retry.params == {"x": 0.5}
    assert retry.system_attrs["failed_trial"] == original.number
    assert retry.system_attrs["retry_history"] == [original.number]
    assert fail_stale_trials(study) == []  # done once
    backend = study._storage._backend
    assert [t.state for t in backend.get_all_trials(study._study_id)] == states(study)


@pytest.mark.process
def test_two_repairers_at_once_make_one_retry(url: str, tmp_path: Path) -> None:
    # The child stops for 5 s inside its transaction (the trial made FAIL, no retry yet)
    # while this process repairs the same trial with its own storage: it must wait for the
    # child's commit, then find the trial FAIL and leave it.
    marker = tmp_path / "marker"
    child = start_child(url, marker, "ours", pause=5)
    storage = open_storage(url, **HEARTBEAT)  # before the marker: repair at once then
    assert wait_for_marker(child, marker) == "FAIL"
    study = optuna.load_study(study_name="window", storage=storage)
    assert fail_stale_trials(study) == []
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    [trial_id] = ast.literal_eval(out)  # the child failed it
    original, retry = study.get_trials()
    assert original._trial_id == trial_id
    assert (original.state, retry.state) == (TrialState.FAIL, TrialState.WAITING)


def test_repairers_racing_in_threads_make_one_retry(url: str) -> None:
    storages = [open_storage(url, **HEARTBEAT) for _ in range(3)]  # one per repairer
    study = optuna.create_study(study_name="race", storage=storages[0], direction="maximize")
    trial_id = stale_trial(storages[0], study)
    time.sleep(STALE_S)
    studies = [optuna.load_study(study_name="race", storage=s) for s in storages]
    start, results = threading.Barrier(len(studies)), []

    def repair(study: optuna.Study) -> None:
        start.wait()
        results.append(fail_stale_trials(study))

    threads = [threading.Thread(target=repair, args=(s,)) for s in studies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == [[], [], [trial_id]]
    assert states(study) == [TrialState.FAIL, TrialState.WAITING]


def test_the_retry_is_the_one_optunas_callback_makes_and_max_retry_holds(url: str) -> None:
    # Side by side with Optuna's own fail_stale_trials on the same trials: a first failure,
    # a trial retried twice (a third retry is allowed by max_retry=3) and three times (not).
    studies = {}
    for inherit in (False, True):
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=3, inherit_intermediate_values=inherit
        )
        for repairer in ("optuna", "ours"):
            name = f"{repairer}-{inherit}"
            # Optuna's pass on Optuna's storage: focaltune's shows that pass no stale trial.
            storage = (
                optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2)
                if repairer == "optuna"
                else open_storage(url, **HEARTBEAT)
            )
            storage.heartbeat_stale_trial_callback = callback
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
            stale_trial(storage, study)
            stale_trial(storage, study, {"failed_trial": 7, "retry_history": [7, 8]})
            stale_trial(storage, study, {"failed_trial": 7, "retry_history": [7, 8, 9]})
            studies[name] = study
    time.sleep(STALE_S)

    def retries(study: optuna.Study) -> list[tuple]:
        waiting = study.get_trials(states=(TrialState.WAITING,))
        return [
            (t.params, t.distributions, t.user_attrs, t.system_attrs, t.intermediate_values)
            for t in waiting
        ]

    for inherit in (False, True):
        optuna.storages.fail_stale_trials(studies[f"optuna-{inherit}"])
        ours = studies[f"ours-{inherit}"]
        assert len(fail_stale_trials(ours)) == 3
        assert retries(ours) == retries(studies[f"optuna-{inherit}"])
        first, second, third, *copies = ours.get_trials()
        assert [t.state for t in (first, second, third)] == [TrialState.FAIL] * 3
        assert [c.system_attrs for c in copies] == [
            {"failed_trial": 0, "retry_history": [0]},
            {"failed_trial": 7, "retry_history": [7, 8, 1]},
        ]  # none for the third: max_retry
        assert copies[0].intermediate_values == ({0: 0.5, 1: 0.75} if inherit else {})


def test_a_trial_that_never_beat_is_failed_and_retried_in_one_transaction(url: str) -> None:
    storage = open_storage(url, **HEARTBEAT)
    study = optuna.create_study(study_name="never", storage=storage, direction="maximize")
    dead = stale_trial(storage, study, beat=False)
    live = stale_trial(storage, study)
    assert fail_stale_trials(study) == []  # young: may still beat
    time.sleep(STALE_S)
    storage.record_heartbeat(live)
    assert fail_stale_trials(study) == [dead]
    assert states(study) == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    retry = study.get_trials()[2]
    assert retry.params == {"x": 0.25} and retry.system_attrs["failed_trial"] == 0
    assert fail_and_retry(storage, dead) is None  # a repeat does nothing


def test_fail_and_retry_returns_the_retry(url: str) -> None:
    # fail_and_retry fails a RUNNING trial whether stale or not: choosing is the caller's.
    storage = open_storage(url, **HEARTBEAT)
    study = optuna.create_study(study_name="direct", storage=storage, direction="maximize")
    trial_id = stale_trial(storage, study)
    retry_id = fail_and_retry(storage, trial_id)
    assert retry_id is not None
    retry = storage.get_trial(retry_id)
    assert (retry.state, retry.number, retry.params) == (TrialState.WAITING, 1, {"x": 0.25})
    assert storage.get_trial(trial_id).state == TrialState.FAIL
    assert storage.get_trial(trial_id).datetime_complete is not None
    assert fail_and_retry(storage, trial_id) is None
    assert fail_and_retry(storage, retry_id) is None  # WAITING, not RUNNING: left alone
    storage.heartbeat_stale_trial_callback = None  # failed, not retried
    assert fail_and_retry(storage, stale_trial(storage, study)) is None
    assert states(study) == [TrialState.FAIL, TrialState.WAITING, TrialState.FAIL]


def test_a_storage_without_heartbeats_fails_nothing(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'quiet.db'}", heartbeat_interval=None)
    study = optuna.create_study(study_name="quiet", storage=storage)
    study.ask()
    assert fail_stale_trials(study) == []
    assert fail_stale_trials(optuna.create_study()) == []  # in memory: Optuna's no-op
    assert states(study) == [TrialState.RUNNING]


@pytest.mark.postgres
def test_a_repair_waits_for_a_restarted_server(tmp_path: Path) -> None:
    with LocalPostgres(tmp_path / "pg") as server:
        storage = open_storage(server.create_database("repair"), **HEARTBEAT)
        study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
        trial_id = stale_trial(storage, study)
        server.stop()
        restart = threading.Timer(3.0, server.start)
        restart.start()
        try:
            retry_id = fail_and_retry(storage, trial_id)  # waits for the server
        finally:
            restart.join()
        assert retry_id is not None
        assert states(study) == [TrialState.FAIL, TrialState.WAITING]
