"""Final training: each member with its own seed, SWA per member, the ensemble, the bundle.

``run_final`` is what ``focaltune final`` does. Members are trained one after the other
and written to the staging bundle as soon as they are done, so only one model is in
memory. Everything measured goes to ``report.json``; ``ensemble.json`` gets only what
``predict`` needs plus provenance.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import trainer.final.bundle as bundle
from trainer.config import FinalConfig
from trainer.data import Splits, load_labelled, load_splits
from trainer.files import staged_folder
from trainer.final.ensemble import Ensemble, fit_ensemble
from trainer.final.members import LabelledSet, MemberRun, retrain_full, train_member
from trainer.final.predict import progress_bar
from trainer.final.report import build_report, manifest_body, write_report

log = logging.getLogger(__name__)


def _load_test(final: FinalConfig, splits: Splits) -> LabelledSet | None:
    if not final.data.test:
        return None
    texts, labels = load_labelled(final.data.test, final.data, splits.label_names, what="data.test")
    return LabelledSet(texts, labels)


def _train_all(
    final: FinalConfig, splits: Splits, test: LabelledSet | None, staging: Path, progress: bool
) -> tuple[list[MemberRun], Ensemble]:
    folders = [staging / bundle.MEMBERS / f"member-{i + 1}" for i in range(len(final.members))]
    with progress_bar(progress) as bar:
        runs = [
            train_member(final, i, splits, test, None if final.full_data else folders[i], bar)
            for i in range(len(final.members))
        ]
        started = time.perf_counter()
        ensemble = fit_ensemble(
            final.ensemble,
            [run.eval_probs for run in runs],
            splits.eval_labels,
            splits.label_distribution("train"),
            full_data=final.full_data,
        )
        ensemble.seconds = time.perf_counter() - started
        if final.full_data:
            for run in runs:
                retrain_full(final, run, splits, test, folders[run.index], bar)
        # Test probabilities are those of the members the bundle holds (retrained ones in
        # full-data mode), scored with the weights and bias fitted on validation.
        if test is not None:
            ensemble.score_test([run.test_probs for run in runs], test.labels)
    return runs, ensemble


def run_final(
    final: FinalConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the members, SWA, ensemble; write the bundle to ``out``; return the report."""
    out = Path(out)
    bundle.check_destination(out, overwrite)  # fail before hours of training, not after
    started = time.perf_counter()
    splits = load_splits(final.data)
    test = _load_test(final, splits)
    publish = functools.partial(bundle.publish, overwrite=overwrite)
    with staged_folder(out, publish=publish) as staging:
        runs, ensemble = _train_all(final, splits, test, staging, progress)
        report = build_report(final, splits, runs, ensemble, test)
        report["timings"]["total"] = time.perf_counter() - started
        write_report(staging, report)
        bundle.write_manifest(staging, manifest_body(final, runs, ensemble, splits.label_names))
    return report
