"""A trial's dashboard note: what it says, and writing it without reading the study.

optuna-dashboard keeps notes in the study's system attributes: a version key and the
body in chunks. Its ``save_note`` reads every note of the study twice (to find the next
version, and to blank the chunks of a longer previous version): 0.11 s per trial on a
1,000-trial study here, growing with the study. A worker writes a trial's note once,
when the trial ends, and trial ids are never reused, so ``save_trial_note`` writes
version 1 and the chunks directly. A note a user edits in the dashboard afterwards gets
version 2 the usual way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna_dashboard._note import note_ver_key, split_body

if TYPE_CHECKING:  # the trainer side pulls in torch and transformers: types only here
    from trainer.callbacks import EvalRecord
    from trainer.config import Hyperparams


def save_trial_note(trial: optuna.Trial, body: str) -> None:
    """Write the first note of ``trial`` (as optuna-dashboard's ``save_note`` stores it)."""
    storage, study_id, trial_id = trial.storage, trial.study._study_id, trial._trial_id
    storage.set_study_system_attr(study_id, note_ver_key(trial_id), 1)
    for key, chunk in split_body(body, trial_id).items():
        storage.set_study_system_attr(study_id, key, chunk)


def trial_note(
    number: int,
    hyper: Hyperparams,
    params: dict[str, Any],
    labels: list[str],
    history: list[EvalRecord],
    reason: str,
) -> str:
    """The dashboard note (Markdown): focal settings, accuracy per evaluation, why it ended."""
    alpha = hyper.focal_alpha or [1.0] * len(labels)
    lines = [
        f"## Trial {number}: {reason}",
        "",
        "| setting | value |",
        "|---|---|",
        f"| focal gamma | {hyper.focal_gamma:.3f} |",
        "| focal alpha (mean 1) | "
        + ", ".join(f"{name} {a:.2f}" for name, a in zip(labels, alpha, strict=False))
        + " |",
        f"| label smoothing | {hyper.label_smoothing:.3f} |",
        f"| learning rate | {hyper.learning_rate:.2e} |",
        f"| epochs | {hyper.epochs} |",
    ]
    if "backbone" in params:
        lines.append(f"| backbone | {params['backbone']} |")
    lines += ["", "### Accuracy per evaluation", ""]
    if not history:
        return "\n".join([*lines, "No evaluation finished.", ""])
    best = max(history, key=lambda r: r.accuracy)
    lines += ["| evaluation | epoch | accuracy | macro-F1 | predicted vs true (TV) |"]
    lines += ["|---|---|---|---|---|"]
    for r in history:
        mark = " **best**" if r is best else ""
        m = r.metrics
        lines.append(
            f"| {r.index}{mark} | {r.epoch:.2f} | {r.accuracy:.4f} | {m['macro_f1']:.4f} "
            f"| {m['pred_tv_distance']:.3f} |"
        )
    return "\n".join([*lines, "", f"Ended: {reason}.", ""])
