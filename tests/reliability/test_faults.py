"""Faults injected into real worker processes on real databases; each test then checks
the study in the database: budget met, nothing RUNNING, every lost trial retried.

tests/search/test_worker.py covers one kill -9 (a new worker retries) and one SIGTERM;
these add a kill and a SIGTERM among live workers, a PostgreSQL restart, a full disk
and a CUDA out-of-memory error.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from benchmarks.soak import keeps_params
from tests.reliability.conftest import new_study
from tests.search.conftest import finish, start_worker, states
from tools.postgres import LocalPostgres

pytestmark = [pytest.mark.slow, pytest.mark.process]
TINY = {"pruner": {"type": "none"}}  # no pruning: every trial's end is the fault's doing
OBJECTIVE_ENDS = ("failed:", "not run:")  # the objective's own end reasons for a FAIL
T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 180, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def mid_trial(study: optuna.Study, n: int = 1) -> list[FrozenTrial]:
    """Wait until ``n`` trials are RUNNING and past their first evaluation."""

    def running() -> list[FrozenTrial]:
        trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        busy = [t for t in trials if t.intermediate_values]
        return busy if len(busy) >= n else []

    return wait_until(running, what=f"{n} trials mid-training")


def retry_of(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    """The trial that retried ``trial`` (RetryHeartbeatStaleTrialCallback's history)."""
    for other in study.get_trials(deepcopy=False):
        if other.system_attrs.get("retry_history", [None])[-1] == trial.number:
            return other
    return None


def died_with_worker(study: optuna.Study) -> list[FrozenTrial]:
    """FAIL trials the objective did not end itself (out of memory, disk full, budget met
    say "failed: ..." or "not run: ..."); a killed one may say "completed" if it died
    while its plots were drawn."""
    failed = study.get_trials(states=(TrialState.FAIL,))
    reason = "end_reason"
    return [t for t in failed if not str(t.user_attrs.get(reason)).startswith(OBJECTIVE_ENDS)]


def assert_nothing_lost(study: optuna.Study, budget: int) -> None:
    """Budget met exactly, nothing RUNNING or WAITING, every killed trial retried to the end."""
    c = states(study)
    assert c["COMPLETE"] + c["PRUNED"] == budget, c
    assert c["RUNNING"] == 0 and c["WAITING"] == 0, c
    for trial in died_with_worker(study):
        retry = retry_of(study, trial)
        assert retry is not None, f"trial {trial.number} was lost (FAIL, no retry)"
        assert keeps_params(retry, trial), (retry.params, trial.params)


@pytest.mark.postgres
def test_kill_and_sigterm_among_live_workers_lose_nothing(
    write_config, postgres_url: str, tmp_path: Path
) -> None:
    study = new_study(
        write_config, postgres_url, "live", tmp_path / "art", study={"n_trials": 5, **TINY}
    )
    workers = [start_worker(postgres_url, "live", i) for i in range(3)]
    mid_trial(study, 3)
    workers[0].kill()  # no cleanup at all: its trial is failed once its heartbeat is stale
    workers[1].send_signal(signal.SIGTERM)
    finish(workers)
    assert [w.returncode for w in workers] == [-signal.SIGKILL, 143, 0]
    lost = died_with_worker(study)
    assert len(lost) == 2, [(t.number, t.state, t.user_attrs) for t in study.trials]
    assert_nothing_lost(study, 5)  # the third worker ran both retries


def test_sigterm_exits_within_the_grace_period_on_a_busy_machine(write_config, tmp_path):
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    study = new_study(write_config, url, "busy", tmp_path / "art", study={"n_trials": 9, **TINY})
    workers = [start_worker(url, "busy", i) for i in range(3)]  # 3 workers on 2 shared cores
    try:
        mid_trial(study, 3)
        stopped = time.monotonic()
        workers[0].send_signal(signal.SIGTERM)
        workers[0].wait(timeout=60)
        seconds = time.monotonic() - stopped
    finally:
        for worker in workers:
            worker.kill()
    assert workers[0].returncode == 143
    assert seconds < 6, f"exit took {seconds:.1f} s, the grace period is 6 s"


@pytest.mark.postgres
def test_postgres_restart_mid_study_workers_reconnect(write_config, tmp_path: Path) -> None:
    with LocalPostgres(tmp_path / "pg") as server:
        url = server.create_database("restart")
        study = new_study(
            write_config, url, "restart", tmp_path / "art", study={"n_trials": 4, **TINY}
        )
        workers = [start_worker(url, "restart", i) for i in range(2)]
        try:
            # Both workers inside a trial: a worker still starting up when the server goes
            # away exits 2 ("is the server running?"), which is not what this test is about.
            in_flight = mid_trial(study, 2)
            server.stop()
            time.sleep(3)  # longer than the heartbeat interval: every worker sees the outage
            server.start()
            outputs = finish(workers)
        finally:
            for worker in workers:
                worker.kill()
        assert [w.returncode for w in workers] == [0, 0], outputs
        assert_nothing_lost(study, 4)
        for trial in in_flight:
            final = study.trials[trial.number]
            assert final.state != TrialState.RUNNING
            assert final.state != TrialState.FAIL or retry_of(study, final) is not None


@pytest.mark.postgres
def test_a_database_gone_for_good_stops_the_worker_with_one_line_and_loses_nothing(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOCALTUNE_OUTAGE_SECONDS", "3")  # the worker waits 3 s, not 5 min
    with LocalPostgres(tmp_path / "pg") as server:
        url = server.create_database("gone")
        study = new_study(
            write_config, url, "gone", tmp_path / "art", study={"n_trials": 3, **TINY}
        )
        worker = start_worker(url, "gone", 0)
        try:
            in_flight = mid_trial(study)[0]
            server.stop()
            out, _ = worker.communicate(timeout=120)
        finally:
            worker.kill()
        assert worker.returncode == 1, out[-6000:]
        last = out.strip().splitlines()[-1]
        assert last.startswith(
            "focaltune: error: the database was unreachable for more than 3 s"
        ), out[-6000:]
        assert "Traceback" not in out
        server.start()  # back: a new worker fails the abandoned trial as stale and retries it
        assert study.trials[in_flight.number].state == TrialState.RUNNING
        again = start_worker(url, "gone", 1)
        finish([again])
        assert again.returncode == 0
        assert_nothing_lost(study, 3)
        assert retry_of(study, study.trials[in_flight.number]) is not None


def test_full_disk_fails_that_trial_and_the_worker_goes_on(write_config, tmp_path, tmpfs):
    disk = tmpfs("artifacts", size="256k")  # a real, small file system as the artifact folder
    filler = fill(disk)
    url = f"sqlite:///{tmp_path / 'disk.db'}"
    study = new_study(write_config, url, "disk", disk, study={"n_trials": 2, **TINY})
    worker = start_worker(url, "disk", 0)
    try:
        failed = wait_until(
            lambda: study.get_trials(deepcopy=False, states=(TrialState.FAIL,)),
            what="the trial whose artifacts did not fit",
        )
        filler.unlink()  # space again: the next trial's artifacts fit
        out, _ = worker.communicate(timeout=300)
    finally:
        worker.kill()
    assert worker.returncode == 0, out
    reason = failed[0].user_attrs["end_reason"]
    assert reason.startswith("failed: artifact write") and "No space left" in reason
    assert_nothing_lost(study, 2)
    assert " FAIL " in out and out.count(" COMPLETE ") == 2
    plots = [p for p in disk.iterdir() if p.is_file() and p != filler]
    assert len(plots) == 4  # two PNGs for each of the two later trials, none half-written


def fill(folder: Path) -> Path:
    """Fill ``folder``'s file system to the last byte; returns the filler file."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(descriptor)
    return filler


# There is no GPU here, so a CUDA out-of-memory error is *injected*: this module, put on
# the worker's PYTHONPATH as sitecustomize, raises torch.OutOfMemoryError (what a CUDA
# allocation failure raises) from the first step of the Nth optimizer the process makes,
# i.e. where a real OOM strikes first: allocating the optimizer state in trial N.
INJECT_OOM = """
import os
import torch

_AT = int(os.environ["FOCALTUNE_TEST_OOM_AT"])
_made = [0]
_step = torch.optim.AdamW.step


def step(self, *args, **kwargs):
    if not getattr(self, "_focaltune_seen", False):
        self._focaltune_seen = True
        _made[0] += 1
        if _made[0] == _AT:
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)"
            )
    return _step(self, *args, **kwargs)


torch.optim.AdamW.step = step
"""


def test_injected_cuda_oom_fails_that_trial_and_the_worker_goes_on(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(INJECT_OOM)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "inject"))
    monkeypatch.setenv("FOCALTUNE_TEST_OOM_AT", "1")  # the worker's first trial
    url = f"sqlite:///{tmp_path / 'oom.db'}"
    study = new_study(write_config, url, "oom", tmp_path / "art", study={"n_trials": 2, **TINY})
    worker = start_worker(url, "oom", 0)
    out, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, out
    first = study.trials[0]
    assert first.state == TrialState.FAIL
    assert first.user_attrs["end_reason"].startswith("failed: out of memory: CUDA out of memory")
    assert "injected by the test" in first.user_attrs["end_reason"]
    assert [t.state for t in study.trials[1:]] == [TrialState.COMPLETE] * 2
    assert_nothing_lost(study, 2)
    assert " FAIL " in out and out.count(" COMPLETE ") == 2  # the worker's own trial lines


def test_fault_helpers_see_a_lost_trial(tmp_path: Path) -> None:
    """assert_nothing_lost must fail when a trial FAILed without reason and without retry."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'h.db'}")
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0))
    with pytest.raises(AssertionError, match="was lost"):
        assert_nothing_lost(study, 1)
