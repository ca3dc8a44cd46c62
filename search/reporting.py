"""What a finished trial leaves behind for people watching the study.

At the end of every trial (COMPLETE, PRUNED or FAIL, while it is still RUNNING) the
reporter uploads two PNGs of the trial's best evaluation to the study's artifact store
(confusion matrix; predicted vs true class shares), writes a dashboard note (focal
settings, accuracy per evaluation, why it ended) and, when enabled, one W&B run.

Failure policy: an artifact that cannot be written (disk full, folder gone) fails the
trial with ``end_reason = "failed: artifact write: ..."`` by raising ``ReportingError``;
the worker lists it among the errors it catches and goes on. A trial that is already
failing keeps its own reason, and an interrupted worker (SIGINT/SIGTERM) only gets the
note, so it stops promptly. W&B is a side channel: its errors are logged, never fatal.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from search.config import StudyConfig
from search.notes import save_trial_note, trial_note
from search.space import params_to_config
from storage import sqlite_path
from trainer.errors import BadInput
from trainer.files import atomic_file

if TYPE_CHECKING:  # the trainer side pulls in torch and transformers: types only here
    from trainer.callbacks import EvalRecord

log = logging.getLogger(__name__)
TrialReporter = Callable[[optuna.Trial, "list[EvalRecord]", Any], None]


class ReportingError(RuntimeError):
    """A trial's artifacts could not be written; the trial fails, the worker goes on."""


class AtomicArtifactStore(FileSystemArtifactStore):
    """A folder of artifacts whose files appear whole (temp file, then rename)."""

    def __init__(self, base_path: str | Path) -> None:
        super().__init__(Path(base_path))
        Path(base_path).mkdir(parents=True, exist_ok=True)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        with atomic_file(self._get_filepath(artifact_id)) as tmp, open(tmp, "wb") as handle:
            shutil.copyfileobj(content_body, handle, 1 << 20)


def artifact_dir(cfg: StudyConfig, url: str) -> Path:
    """``tracking.artifacts``, else ``<db stem>-artifacts`` beside the SQLite file."""
    if cfg.tracking.artifacts:
        return Path(cfg.tracking.artifacts).expanduser().resolve()
    return default_artifact_dir(url)


def default_artifact_dir(url: str) -> Path:
    """For a study that names no folder: beside the SQLite file, else ./focaltune-artifacts."""
    db = sqlite_path(url)
    if db is None:  # PostgreSQL (or in-memory SQLite): no file to sit beside
        return Path("focaltune-artifacts").resolve()
    return db.resolve().with_name(f"{db.stem}-artifacts")


def wandb_dir(cfg: StudyConfig, url: str) -> Path:
    """``tracking.wandb.dir``, else the artifact folder's parent (runs in ``<dir>/wandb``)."""
    if cfg.tracking.wandb.dir:
        return Path(cfg.tracking.wandb.dir).expanduser().resolve()
    return artifact_dir(cfg, url).parent


def end_reason(trial: optuna.Trial) -> str:
    """Why the trial ended: the objective's ``end_reason``, else the exception under way."""
    attrs = trial.user_attrs  # includes what this trial object set itself
    if "end_reason" in attrs:
        return str(attrs["end_reason"])
    err = sys.exc_info()[1]  # called from the objective's `finally`: the error, if any
    if err is None:
        return "completed"
    if not isinstance(err, Exception):
        return f"interrupted: {err or type(err).__name__}"
    return f"failed: {type(err).__name__}: {str(err)[:200]}"


def upload_plots(
    store: FileSystemArtifactStore, trial: optuna.Trial, best: EvalRecord, labels: list[str]
) -> list[str]:
    """Render the best evaluation's two PNGs and upload them; returns the artifact ids."""
    from trainer.plots import class_distribution_png, confusion_matrix_png

    title = f"trial {trial.number}, evaluation {best.index} (epoch {best.epoch:.2f})"
    m = best.metrics
    with tempfile.TemporaryDirectory(prefix="focaltune-plots-") as tmp:
        files = [
            confusion_matrix_png(
                m["confusion"], labels, Path(tmp) / f"trial-{trial.number}-confusion.png", title
            ),
            class_distribution_png(
                m["pred_distribution"],
                m["label_distribution"],
                labels,
                Path(tmp) / f"trial-{trial.number}-class-distribution.png",
                title,
            ),
        ]
        return [
            upload_artifact(artifact_store=store, file_path=str(f), study_or_trial=trial)
            for f in files
        ]


def label_names(cfg: StudyConfig, history: list[EvalRecord], result: Any) -> list[str]:
    names = cfg.data.labels or getattr(result, "label_names", None)
    if names:
        return list(names)
    return [str(k) for k in range(len(history[0].metrics["confusion"]))] if history else []


def make_trial_reporter(study: optuna.Study, cfg: StudyConfig, url: str) -> TrialReporter:
    """The ``on_trial_end`` hook of ``make_objective``: artifacts, note, W&B run."""
    folder = artifact_dir(cfg, url)
    try:
        store = AtomicArtifactStore(folder)
    except OSError as err:
        raise BadInput(
            f"tracking.artifacts: cannot create the artifact folder {folder} ({err.strerror}); "
            "set tracking.artifacts in the study config to a writable folder"
        ) from None
    wandb_on = cfg.tracking.wandb.enabled and cfg.tracking.wandb.mode != "disabled"
    if wandb_on:
        from search.tracking import start_service

        start_service()
    tracking = {"wandb": wandb_on}

    def report(trial: optuna.Trial, history: list[EvalRecord], result: Any) -> None:
        reason = end_reason(trial)
        err = sys.exc_info()[1]
        labels = label_names(cfg, history, result)
        best = max(history, key=lambda r: r.accuracy) if history else None
        fatal: OSError | None = None
        if best is not None and not reason.startswith("interrupted"):
            try:
                upload_plots(store, trial, best, labels)
            except OSError as exc:
                if err is None or isinstance(err, optuna.TrialPruned):
                    fatal, reason = exc, f"failed: artifact write: {exc}"[:300]
                    trial.set_user_attr("end_reason", reason)
                else:  # already failing: its own reason wins
                    log.warning("trial %d: artifacts not written: %s", trial.number, exc)
        hyper = params_to_config(trial.params, cfg).params
        save_trial_note(
            trial, trial_note(trial.number, hyper, trial.params, labels, history, reason)
        )
        if tracking["wandb"] and not reason.startswith("interrupted"):
            # One failure (no account, no network in online mode) turns W&B off for this
            # worker, so later trials do not each wait for its timeout.
            tracking["wandb"] = log_trial_run(
                cfg, url, study.study_name, trial, history, labels, reason
            )
        if fatal is not None:
            raise ReportingError(reason) from fatal

    return report


def log_trial_run(
    cfg: StudyConfig,
    url: str,
    study_name: str,
    trial: optuna.Trial,
    history: list[EvalRecord],
    labels: list[str],
    reason: str,
) -> bool:
    """One W&B run for the trial; a W&B problem is logged (False), the trial is unaffected."""
    from search.tracking import evaluation_rows, log_run

    state = reason.split(" ", 1)[0].rstrip(":")  # completed | pruned | failed
    best = max(history, key=lambda r: r.accuracy) if history else None
    summary: dict[str, Any] = {"state": state, "end_reason": reason, "pruned": state == "pruned"}
    if best is not None:
        summary.update(best_eval_index=best.index, best_epoch=best.epoch)
        summary.update({f"best_{k}": best.metrics[k] for k in ("accuracy", "macro_f1", "nll")})
    try:
        log_run(
            cfg.tracking.wandb,
            wandb_dir(cfg, url),
            group=study_name,
            name=f"trial-{trial.number}",
            config={**trial.params, "trial_number": trial.number},
            rows=evaluation_rows(history, labels),
            summary=summary,
            tags=[state],
            failed=state == "failed",
        )
    except Exception as exc:  # tracking must never cost a trial
        log.warning("trial %d: W&B run not written, W&B off for this worker: %s", trial.number, exc)
        return False
    return True
