"""Workers as real processes on real databases: budget, faults, pruning, the optuna CLI."""

from __future__ import annotations

import gc
import json
import logging
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from transformers import TrainerCallback

from search.config import load_study_config
from search.study import create_study
from search.worker import ahead_of, run_worker
from storage import open_storage
from tests.search.conftest import ROOT, finish, focaltune, start_worker, states
from trainer.config import FinalConfig
from trainer.train import NonFiniteLoss

pytestmark = [pytest.mark.slow, pytest.mark.process]


def created(write_config, url: str, name: str, **sections) -> optuna.Study:
    cfg = load_study_config(write_config(name, **sections))
    return create_study(cfg, open_storage(url, heartbeat_interval=None))


def wait_for_running(study: optuna.Study, timeout: float = 120) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if running and running[0].intermediate_values:  # mid-trial: at least one evaluation
            return running[0]
        time.sleep(0.3)
    raise AssertionError("no trial reached its first evaluation in time")


@pytest.mark.postgres
def test_three_workers_meet_the_budget_exactly(write_config, postgres_url) -> None:
    study = created(write_config, postgres_url, "budget", study={"n_trials": 9})
    procs = [start_worker(postgres_url, "budget", i) for i in range(3)]
    outputs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    c = states(study)
    assert c["COMPLETE"] + c["PRUNED"] == 9 and c["RUNNING"] == 0, c
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    params = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(set(params)) == len(params), "two trials with identical params"
    assert sum(o.count(" COMPLETE ") + o.count(" PRUNED ") for o in outputs) == 9


@pytest.mark.postgres
def test_killed_worker_trial_fails_after_grace_and_is_retried(write_config, postgres_url) -> None:
    study = created(write_config, postgres_url, "kill", study={"n_trials": 3})
    victim = start_worker(postgres_url, "kill", 0)
    doomed = wait_for_running(study)
    victim.kill()  # SIGKILL: no chance to clean up; only the heartbeat stops
    victim.wait()
    rescuer = start_worker(postgres_url, "kill", 1)
    finish([rescuer])
    assert rescuer.returncode == 0
    trials = study.get_trials()
    assert trials[doomed.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == doomed.number]
    assert retries and retries[0].params == doomed.params
    c = states(study)
    assert c["COMPLETE"] + c["PRUNED"] == 3 and c["RUNNING"] == 0 and c["WAITING"] == 0


def test_sigterm_leaves_no_running_trial(write_config, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'term.db'}"
    study = created(write_config, url, "term", study={"n_trials": 3, "grace_period": 6})
    worker = start_worker(url, "term", 0)
    trial = wait_for_running(study)
    stopped = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=30)
    assert time.monotonic() - stopped < 6, "must exit within the grace period"
    assert worker.returncode == 143, out
    trials = study.get_trials()
    assert trials[trial.number].state == TrialState.FAIL
    assert states(study)["RUNNING"] == 0
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert waiting and waiting[0].params == trial.params  # retried by the next worker


def test_a_retry_still_waiting_counts_ahead_of_a_newer_trial(tmp_path) -> None:
    """The race a soak run hit: worker A enqueues a retry (number 1, WAITING) just after
    worker B looked for waiting trials and just before B created its own (number 2).
    With budget 2 and one trial done, B must yield to the retry, or 3 trials finish."""
    storage = open_storage(f"sqlite:///{tmp_path / 'race.db'}", heartbeat_interval=None)
    study = optuna.create_study(study_name="race", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    study.enqueue_trial({})  # the retry, not yet picked up by anyone
    newer = storage.create_new_trial(study._study_id)  # B's trial: RUNNING, number 2
    assert storage.get_trial(newer).number == 2
    assert ahead_of(study, 2) == 2  # done + the waiting retry: the budget of 2 is covered
    study.tell(study.ask(), 0.6)  # the retry runs...
    assert ahead_of(study, 2) == 2  # ...and still counts once it is finished


def test_two_sqlite_workers_and_a_polling_reader_never_lock(write_config, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'lock.db'}"
    study = created(write_config, url, "lock", study={"n_trials": 6})
    stop, errors, reads = threading.Event(), [], [0]

    def poll() -> None:  # what the dashboard does: read everything, again and again
        reader = optuna.load_study(
            study_name="lock", storage=open_storage(url, heartbeat_interval=None)
        )
        while not stop.is_set():
            try:
                reader.get_trials(deepcopy=False)
                optuna.get_all_study_summaries(reader._storage)
                reads[0] += 1
            except Exception as err:  # noqa: BLE001 — any failure is what we look for
                errors.append(repr(err))
            time.sleep(0.05)

    thread = threading.Thread(target=poll)
    thread.start()
    procs = [start_worker(url, "lock", i) for i in range(2)]
    outputs = finish(procs)
    stop.set()
    thread.join()
    assert not errors and reads[0] > 10
    assert all("database is locked" not in o for o in outputs)
    c = states(study)
    assert c["COMPLETE"] + c["PRUNED"] == 6 and c["FAIL"] == 0


def test_pruner_prunes_a_trial_that_cannot_learn(write_config, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'prune.db'}"
    good = {"learning_rate": 3e-3, "epochs": 2, "focal_gamma": 0.0, "label_smoothing": 0.0}
    hopeless = {**good, "learning_rate": 1e-9}
    study = created(
        write_config,
        url,
        "prune",
        study={
            "n_trials": 3,
            "pruner": {"type": "median", "n_startup_trials": 2},
            "enqueue": [good, {**good, "focal_gamma": 1.0}, hopeless],
        },
        space={"learning_rate": [1e-9, 1e-2], "epochs": [2, 2]},
    )
    worker = start_worker(url, "prune", 0)
    finish([worker])
    trials = study.get_trials()
    last = trials[2]
    assert last.params["learning_rate"] == 1e-9
    assert last.state == TrialState.PRUNED, [t.intermediate_values for t in trials]
    assert max(last.intermediate_values) < 4  # 2 epochs x 2 evaluations: cut before the end
    assert last.user_attrs["end_reason"].startswith("pruned at evaluation")


@pytest.mark.postgres
def test_optuna_cli_reads_the_study_and_export_validates(write_config, postgres_url, tmp_path):
    study = created(write_config, postgres_url, "cli", study={"n_trials": 2})
    worker = start_worker(postgres_url, "cli", 0)
    finish([worker])
    optuna_cli = [str(Path(sys.executable).parent / "optuna")]
    for command in ("trials", "best-trial"):
        result = subprocess.run(
            [*optuna_cli, command, "--storage", postgres_url, "--study-name", "cli", "-f", "json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)
    out = tmp_path / "final.yaml"
    result = focaltune(
        "export",
        "--study",
        "cli",
        "--top-k",
        "2",
        "--out",
        str(out),
        env={"FOCALTUNE_STORAGE": postgres_url},
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    final = FinalConfig.model_validate(yaml.safe_load(text))
    assert len(final.members) == 2 and len({m.seed for m in final.members}) == 2
    password = postgres_url.split(":")[2].split("@")[0]
    assert password not in text and postgres_url not in text
    status = focaltune(
        "status", "--study", "cli", "--json", env={"FOCALTUNE_STORAGE": postgres_url}
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["finished"] == 2 and password not in status.stdout
    assert study.best_trial.number in final.provenance["trials"]


class _Spy(TrainerCallback):
    """Keeps weak references to each trial's model, optimizer and Trainer, notes which of
    the earlier trials' objects are still alive when a trial starts, and ends trials 0-2
    the three ways a trial ends early: pruned, diverged, and a CUDA out-of-memory error
    (injected: there is no GPU here; torch raises the same exception type on one)."""

    # Made at raise time: a stored exception would keep its traceback, and so the trial.
    ENDINGS = (
        lambda: optuna.TrialPruned("pruned by the test"),
        lambda: NonFiniteLoss("injected NaN"),
        lambda: torch.OutOfMemoryError("CUDA out of memory (injected by the test)"),
    )

    def __init__(self, refs: list, alive_at_start: list, trainers: list) -> None:
        self.refs, self.alive_at_start, self.trainers = refs, alive_at_start, trainers

    def before_build(self) -> None:
        """Before a trial loads its model: on a GPU both would have to fit at once."""
        self.alive_at_start.append([name for name, ref in self.refs if ref() is not None])

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw) -> None:
        trial = len(self.alive_at_start) - 1
        self.refs += [
            (f"model {trial}", weakref.ref(model)),
            (f"trainer {trial}", self.trainers[-1]),
        ]
        self.trial = trial

    def on_step_end(self, args, state, control, optimizer=None, **kw) -> None:
        if state.global_step == 1:
            self.refs.append((f"optimizer {self.trial}", weakref.ref(optimizer)))
            if self.trial < len(self.ENDINGS):
                raise self.ENDINGS[self.trial]()


def test_pruned_failed_and_oom_trials_free_their_model_before_the_next_trial(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import search.objective
    import trainer.train

    url = f"sqlite:///{tmp_path / 'memory.db'}"
    created(write_config, url, "memory", study={"n_trials": 4}, space={"epochs": [1, 1]})
    refs, alive_at_start, trainers = [], [], []
    spy = _Spy(refs, alive_at_start, trainers)
    real_train, real_build = search.objective.train_model, trainer.train.build_trainer

    def build(*args, **kwargs):
        spy.before_build()
        built = real_build(*args, **kwargs)
        trainers.append(weakref.ref(built))
        return built

    def train(cfg, **kwargs):
        return real_train(cfg, **{**kwargs, "callbacks": [*kwargs["callbacks"], spy]})

    # pytest's log capture keeps every record, and Optuna logs a failed trial with its
    # exc_info: the traceback, and so the trial's frames. A user's log handler formats and
    # drops the record; so must the handlers of this test.
    # (pytest hangs its handlers on non-propagating loggers such as Optuna's, too.)
    for logger in (logging.getLogger(), logging.getLogger("optuna")):
        kept = [h for h in logger.handlers if type(h).__name__ != "LogCaptureHandler"]
        monkeypatch.setattr(logger, "handlers", kept)
    monkeypatch.setattr(trainer.train, "build_trainer", build)
    monkeypatch.setattr(search.objective, "train_model", train)
    # Python's automatic collector runs whenever enough objects were allocated, which would
    # free the cycles at some moment of the next trial, or not. Off, only the worker's own
    # collection counts: the next trial must not start with the last one's memory held.
    gc.disable()
    try:
        summary = run_worker(url, "memory", n_trials=4, echo=lambda line: None)
    finally:
        gc.enable()
    assert summary.trials_run == 4
    states_seen = [t.state for t in optuna.load_study(study_name="memory", storage=url).trials]
    assert states_seen == [TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    # Each trial starts with nothing of the earlier ones alive, and nothing outlives the last.
    assert alive_at_start == [[], [], [], []]
    assert [name for name, ref in refs if ref() is not None] == []
