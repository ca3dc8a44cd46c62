"""Part 3: orchestration overhead per trial on a study that already holds 1,000 trials.

A worker's per-trial storage and sampler work, done by the product's own objects
(``open_study``: heartbeat storage, multivariate TPE, Hyperband; ``suggest``; the
objective's user attributes in one transaction; the dashboard note) without training:
the worker loop's checks, ask + suggest, one report + ``should_prune`` per evaluation,
heartbeats, user attributes, the note, tell. Rendering the two PNG artifacts is timed
too but reported apart: it is per-trial work, not storage or sampler. The study is filled
first (``fill_study``) with COMPLETE trials carrying intermediate values, user attributes
and a dashboard note each, as a real 1,000-trial study holds them.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy

from benchmarks.fill_study import fill, history
from search.config import StudyConfig
from search.notes import save_trial_note, trial_note
from search.objective import best_attrs
from search.reporting import AtomicArtifactStore, upload_plots
from search.space import params_to_config, suggest
from search.study import create_study
from search.worker import ahead_of, counts, open_study
from storage import open_storage
from storage.attrs import set_user_attrs
from storage.stale import fail_stale_trials
from trainer.callbacks import EvalRecord

STORAGE_PHASES = ("loop", "ask", "report", "heartbeat", "attrs", "note", "tell")


class Laps:
    """Seconds per named phase, one list entry per trial, and SQL statements per phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self.statements: Counter[str] = Counter()
        self.phase = ""

    def count_statements(self, engine: sqlalchemy.engine.Engine) -> None:
        """Count the SQL statements each phase sends (commits and checkout pings not included)."""
        sqlalchemy.event.listen(engine, "before_cursor_execute", self._statement)

    def _statement(self, *_: Any) -> None:
        self.statements[self.phase] += 1

    def time(self, phase: str, work: Callable[[], Any]) -> Any:
        self.phase = phase
        started = time.perf_counter()
        result = work()
        self.seconds.setdefault(phase, []).append(time.perf_counter() - started)
        return result

    def medians(self) -> dict[str, float]:
        return {phase: statistics.median(values) for phase, values in self.seconds.items()}


def ask(study: optuna.Study, cfg: StudyConfig) -> optuna.Trial:
    """``study.ask`` + ``suggest`` (the sampler) + the worker's budget check."""
    trial = study.ask()
    suggest(trial, cfg)
    ahead_of(study, trial.number)
    return trial


def report_all(trial: optuna.Trial, records: list[EvalRecord]) -> None:
    for record in records:
        trial.report(record.accuracy, step=record.index)
        trial.should_prune()


def set_attrs(trial: optuna.Trial, records: list[EvalRecord]) -> None:
    """The user attributes a finished trial gets from the objective, written as it does."""
    attrs = {"end_reason": "completed", "train_seconds": 1.0, "train_samples_per_second": 1.0}
    set_user_attrs(trial, best_attrs(records) | attrs | {"device": "cpu"})


def one_trial(study: optuna.Study, cfg: StudyConfig, laps: Laps, plan: dict[str, Any]) -> None:
    """A worker's storage and sampler calls for one trial, in the worker's order."""
    laps.time("loop", lambda: (fail_stale_trials(study), counts(study)))
    trial = laps.time("ask", lambda: ask(study, cfg))
    labels = cfg.data.labels or []
    records = history(plan["rng"], plan["evaluations"], len(labels))
    laps.time("report", lambda: report_all(trial, records))
    beat = study._storage.record_heartbeat
    laps.time("heartbeat", lambda: [beat(trial._trial_id) for _ in range(plan["heartbeats"])])
    laps.time("attrs", lambda: set_attrs(trial, records))
    best = max(records, key=lambda r: r.accuracy)
    laps.time("artifacts", lambda: upload_plots(plan["store"], trial, best, labels))
    hyper = params_to_config(trial.params, cfg).params
    note = trial_note(trial.number, hyper, trial.params, labels, records, "completed")
    laps.time("note", lambda: save_trial_note(trial, note))
    laps.time("tell", lambda: study.tell(trial, best.accuracy))


def measure(
    url: str, base: StudyConfig, work: Path, *, filled: int, trials: int, trial_seconds: float
) -> dict[str, Any]:
    """Create and fill the study at ``url``, then time ``trials`` worker-like trials."""
    started = time.perf_counter()
    create_study(base, open_storage(url, heartbeat_interval=None))
    fill(url, base, filled)
    fill_seconds = time.perf_counter() - started
    started = time.perf_counter()
    study, cfg, storage = open_study(url, base.study.name, worker_index=0)
    study.get_trials(deepcopy=False)  # what a worker's first ask pays: load every trial
    open_seconds = time.perf_counter() - started
    plan = {
        "rng": np.random.default_rng(1),
        "store": AtomicArtifactStore(work / "artifacts"),
        "evaluations": base.space.epochs.high * base.train.evals_per_epoch,
        "heartbeats": math.ceil(trial_seconds / base.study.heartbeat_interval),
    }
    laps = Laps()
    laps.count_statements(storage.engine)
    for _ in range(trials):
        one_trial(study, cfg, laps, plan)
    medians = laps.medians()
    spent = sum(medians[p] for p in STORAGE_PHASES)
    return {
        "trials_in_study": filled,
        "fill_seconds": round(fill_seconds, 1),
        "worker_open_seconds": round(open_seconds, 3),
        "evaluations_per_trial": plan["evaluations"],
        "heartbeats_per_trial": plan["heartbeats"],
        "median_seconds_per_trial": {k: round(v, 4) for k, v in medians.items()},
        "storage_sampler_seconds_per_trial": round(spent, 4),
        "statements_per_trial": {p: n / trials for p, n in laps.statements.items()},
        "fraction_of_trial": spent / trial_seconds,
        "artifacts_fraction_of_trial": medians["artifacts"] / trial_seconds,
    }


def run_orchestration(
    base: StudyConfig, work: Path, *, filled: int, trials: int, trial_seconds: float
) -> dict[str, Any]:
    """``measure`` on a fresh SQLite file and on a fresh local PostgreSQL database."""
    from tools.postgres import LocalPostgres, LocalPostgresError

    kw = {"filled": filled, "trials": trials, "trial_seconds": trial_seconds}
    shutil.rmtree(work, ignore_errors=True)
    (work / "sqlite").mkdir(parents=True)
    results = {"sqlite": measure(f"sqlite:///{work / 'sqlite' / 'study.db'}", base, work, **kw)}
    root = Path(tempfile.mkdtemp(prefix="focaltune-bench-pg-"))
    try:
        with LocalPostgres(root) as server:
            url = server.create_database("bench_orchestration")
            results["postgresql"] = measure(url, base, work, **kw)
    except (LocalPostgresError, OSError) as err:  # no PostgreSQL binaries here
        results["postgresql"] = {"skipped": f"{type(err).__name__}: {err}"[:300]}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results
