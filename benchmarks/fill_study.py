"""A study that already holds N finished trials, for part 3, written in seconds.

The trials look as a focaltune worker leaves them: parameters of ``suggest``'s space, a
value, one intermediate value per evaluation, user attributes and a dashboard note each.
``study.add_trials`` writes a trial with ~50 statements one after another (0.1-0.25 s a
trial measured here: 3-4 minutes for 1,000 on each database), so the same rows go in
through Optuna's own ORM models in one transaction instead, and ``fill`` reads them back
through the public API to check them. Filling is not what part 3 measures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from optuna.distributions import (
    BaseDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.storages._rdb import models  # Optuna's schema; optuna is pinned <6
from optuna.trial import FrozenTrial, TrialState, create_trial
from optuna_dashboard._note import note_ver_key, split_body

from search.config import StudyConfig
from search.notes import trial_note
from search.space import params_to_config
from trainer.callbacks import EvalRecord
from trainer.metrics import classification_metrics

FINITE = models.TrialValueModel.TrialValueType.FINITE
FINITE_STEP = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE


def distributions(base: StudyConfig) -> dict[str, BaseDistribution]:
    """The distributions ``suggest`` uses for ``base.space``, by parameter name."""
    s = base.space
    dists: dict[str, BaseDistribution] = {
        "focal_gamma": FloatDistribution(s.focal_gamma.low, s.focal_gamma.high),
        "label_smoothing": FloatDistribution(s.label_smoothing.low, s.label_smoothing.high),
        "learning_rate": FloatDistribution(s.learning_rate.low, s.learning_rate.high, log=True),
        "epochs": IntDistribution(s.epochs.low, s.epochs.high),
    }
    if s.focal_alpha is not None:
        for k in range(len(base.data.labels or [])):
            dists[f"focal_alpha_{k}"] = FloatDistribution(
                s.focal_alpha.low, s.focal_alpha.high, log=True
            )
    return dists


def draw(dist: BaseDistribution, rng: np.random.Generator) -> float | int:
    if isinstance(dist, IntDistribution):
        return int(rng.integers(dist.low, dist.high + 1))
    low, high = dist.low, dist.high
    if dist.log:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


def history(rng: np.random.Generator, evaluations: int, k: int) -> list[EvalRecord]:
    """Evaluation records with the product's full metrics, from random logits."""
    labels = rng.integers(0, k, 500)
    records = []
    for i in range(1, evaluations + 1):
        logits = rng.normal(size=(500, k)) + 1.5 * np.eye(k)[labels] * i / evaluations
        records.append(EvalRecord(i, float(i), 10 * i, classification_metrics(logits, labels, k)))
    return records


def make_trial(
    base: StudyConfig, rng: np.random.Generator, evals_per_epoch: int
) -> tuple[FrozenTrial, Callable[[int], str]]:
    """A COMPLETE trial as the worker records it, and its dashboard note's body."""
    dists, labels = distributions(base), base.data.labels or []
    params = {name: draw(d, rng) for name, d in dists.items()}
    runs = history(rng, int(params["epochs"]) * evals_per_epoch, len(labels))
    best = max(runs, key=lambda r: r.accuracy)
    attrs = {key: best.metrics[key] for key in ("accuracy", "macro_f1", "recall", "nll")}
    attrs |= {"accuracy_curve": [r.accuracy for r in runs], "end_reason": "completed"}
    trial = create_trial(
        state=TrialState.COMPLETE,
        value=best.accuracy,
        params=params,
        distributions=dists,
        intermediate_values={r.index: r.accuracy for r in runs},
        user_attrs=attrs,
    )
    hyper = params_to_config(params, base).params
    return trial, lambda number: trial_note(number, hyper, params, labels, runs, "completed")


def trial_row(study_id: int, number: int, t: FrozenTrial) -> Any:
    """The rows Optuna's RDBStorage writes for ``t``, as ORM objects."""
    row = models.TrialModel(
        study_id=study_id,
        number=number,
        state=t.state,
        datetime_start=t.datetime_start,
        datetime_complete=t.datetime_complete,
    )
    row.params = [
        models.TrialParamModel(
            param_name=name,
            param_value=t.distributions[name].to_internal_repr(value),
            distribution_json=distribution_to_json(t.distributions[name]),
        )
        for name, value in t.params.items()
    ]
    row.values = [models.TrialValueModel(objective=0, value=t.value, value_type=FINITE)]
    row.intermediate_values = [
        models.TrialIntermediateValueModel(
            step=step, intermediate_value=value, intermediate_value_type=FINITE_STEP
        )
        for step, value in t.intermediate_values.items()
    ]
    row.user_attributes = [
        models.TrialUserAttributeModel(key=key, value_json=json.dumps(value))
        for key, value in t.user_attrs.items()
    ]
    return row


def fill(url: str, base: StudyConfig, n: int) -> None:
    """Add ``n`` COMPLETE trials with notes to the (new, empty) study ``base.study.name``."""
    rng = np.random.default_rng(0)
    made = [make_trial(base, rng, base.train.evals_per_epoch) for _ in range(n)]
    study = optuna.load_study(study_name=base.study.name, storage=url)
    engine = sqlalchemy.create_engine(url)
    with sqlalchemy.orm.Session(engine) as session, session.begin():
        rows = [trial_row(study._study_id, i, trial) for i, (trial, _) in enumerate(made)]
        session.add_all(rows)
        session.flush()  # assigns the trial ids the note keys name
        for row, (_, note) in zip(rows, made, strict=True):
            attrs = {note_ver_key(row.trial_id): 1} | split_body(note(row.number), row.trial_id)
            session.add_all(
                models.StudySystemAttributeModel(
                    study_id=study._study_id, key=key, value_json=json.dumps(value)
                )
                for key, value in attrs.items()
            )
    engine.dispose()
    stored = optuna.load_study(study_name=base.study.name, storage=url).get_trials()
    if [(t.params, t.value) for t in stored] != [(t.params, t.value) for t, _ in made]:
        raise RuntimeError(f"the {n} trials written to {url} do not read back as written")
