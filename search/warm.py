"""Warm start: the best configurations of another study, mapped onto this study's space.

For the common "new backbone or new data, same problem" case: the top trials of an earlier
study are enqueued in a new one, so its first trials start where the old search ended.
A value outside this space is clipped to its nearest bound (with a warning naming it); a
parameter this space does not search is dropped, and one the old study did not search is
left to the sampler.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from search.config import StudyConfig
from search.export import rank_trials
from search.files import local_absolute
from trainer.errors import BadInput

log = logging.getLogger(__name__)


def best_params(study: optuna.Study, top: int) -> list[dict[str, Any]]:
    """The params of the ``top`` best COMPLETE trials of ``study`` (retries once)."""
    ranked = rank_trials(study)
    if not ranked:
        raise BadInput(
            f"--warm-start: study {study.study_name!r} has no COMPLETE trial to start from; "
            "run it first or drop --warm-start"
        )
    return [dict(trial.params) for trial in ranked[:top]]


def _ranges(cfg: StudyConfig) -> dict[str, tuple[float, float]]:
    """This study's searched numeric parameters and their bounds, by Optuna name."""
    s = cfg.space
    ranges = {
        name: (getattr(s, name).low, getattr(s, name).high)
        for name in ("focal_gamma", "label_smoothing", "learning_rate", "epochs")
    }
    if s.focal_alpha is not None:
        for k in range(len(cfg.data.labels or [])):
            ranges[f"focal_alpha_{k}"] = (s.focal_alpha.low, s.focal_alpha.high)
    return ranges


def map_params(params: dict[str, Any], cfg: StudyConfig, where: str) -> dict[str, Any]:
    """``params`` of another study as an enqueue entry of this one (``cfg`` resolved: its
    label names known); clipped and dropped values are logged as warnings naming them."""
    ranges, mapped, notes = _ranges(cfg), {}, []
    backbones = cfg.space.backbones or []  # absolute where local (resolve_config)
    for name, value in params.items():
        if name == "backbone" and local_absolute(value) in backbones:
            mapped[name] = local_absolute(value)
        elif name not in ranges:
            notes.append(f"{name}={value!r} dropped (not in this study's space)")
        else:
            low, high = ranges[name]
            clipped = min(max(value, low), high)
            if clipped != value:
                notes.append(f"{name}={value:g} clipped to {clipped:g}")
            mapped[name] = round(clipped) if name == "epochs" else clipped
    if notes:
        log.warning("warm start, %s: %s", where, "; ".join(notes))
    return mapped
