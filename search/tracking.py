"""Weights & Biases: one run per trial (or per final-ensemble member), grouped by study.

Runs are written once a trial has ended, from its evaluation records: a run costs one
``wandb.init`` and a few writes, never a call inside the training loop. ``mode: offline``
needs no account and no network: the run is a file under ``<dir>/wandb/offline-run-*``
that ``wandb sync`` can upload later.

Nothing secret reaches W&B: the config is the trial's parameters only, and the run
metadata (command line, git state, environment) is switched off, because a worker's
command line may hold a storage URL with a password.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from search.config import WandbConfig
from trainer.callbacks import EvalRecord

log = logging.getLogger(__name__)

# Scalar metrics logged per evaluation; per-class lists are logged as "<name>/<label>".
SCALARS = ("accuracy", "macro_f1", "nll", "pred_tv_distance")
PER_CLASS = ("recall", "precision", "f1", "pred_distribution")


def wandb_settings() -> Any:
    """Quiet, local-only settings: no console capture, no system metrics, no metadata."""
    import wandb

    # x_disable_stats also stops the system monitor probing cloud metadata endpoints;
    # x_disable_meta and x_disable_machine_info keep sys.argv (which may carry a storage
    # password) out of the run; in wandb 0.31 either alone does, both guard against changes.
    return wandb.Settings(
        silent=True,
        console="off",
        x_disable_stats=True,
        x_disable_meta=True,
        x_disable_machine_info=True,
        disable_git=True,
        disable_code=True,
        save_code=False,
    )


def evaluation_rows(
    history: Sequence[EvalRecord], label_names: Sequence[str]
) -> list[tuple[int, dict[str, float]]]:
    """(evaluation index, flat metrics) per evaluation, ready for ``run.log``."""
    rows = []
    for record in history:
        row = {"epoch": float(record.epoch)}
        row.update({k: float(record.metrics[k]) for k in SCALARS if k in record.metrics})
        for key in PER_CLASS:
            for name, value in zip(label_names, record.metrics.get(key, []), strict=False):
                row[f"{key}/{name}"] = float(value)
        rows.append((record.index, row))
    return rows


def log_run(
    settings: WandbConfig,
    directory: Path,
    *,
    group: str,
    name: str,
    config: Mapping[str, Any],
    rows: Sequence[tuple[int, Mapping[str, float]]],
    summary: Mapping[str, Any],
    job_type: str = "trial",
    tags: Sequence[str] = (),
    failed: bool = False,
) -> Path | None:
    """Write one finished run; returns its folder (None when W&B is disabled)."""
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=settings.project,
        mode=settings.mode,
        dir=str(directory),
        group=group,
        name=name,
        job_type=job_type,
        tags=list(tags),
        config=dict(config),
        reinit="create_new",  # never finish a run the user's own code has open
        settings=wandb_settings(),
    )
    try:
        for step, row in rows:
            run.log(dict(row), step=step)
        run.summary.update(dict(summary))
    finally:
        run.finish(exit_code=1 if failed else 0)
    return None if settings.mode == "disabled" else Path(run.dir).parent


def start_service() -> None:
    """Start W&B's background service now, so the first trial does not pay for it."""
    import wandb

    wandb.setup(wandb_settings())
