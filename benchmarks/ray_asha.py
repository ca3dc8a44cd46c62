"""Part 1 peer: the same search as a Ray Tune user runs it, random search under ASHA.

Ray Tune's default search (``BasicVariantGenerator``: random samples of the product's space,
same names and ranges as ``search.space.suggest``) with an ``ASHAScheduler`` at its defaults
but ``max_t``, the most evaluations a trial can make. Each trial is a function trainable on
``threads // workers`` CPUs (torch at as many threads), ``workers`` of them at once, as
focaltune splits the threads between its workers; it trains with the product's
``train_model`` and reports every evaluation, so ASHA sees the same evaluations the
product's pruner sees. The clock starts before ``ray.init`` (its seconds are reported
apart) and stops when ``Tuner.fit`` returns at the budget.

Counted per trial that reported at least once: its best accuracy, the seconds from the start
to its last report, and COMPLETE if it made every evaluation of its own ``epochs``, PRUNED
if ASHA stopped it at a milestone, STOPPED (not counted) if the budget cut it. Errored
trials are counted apart.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from benchmarks.anytime import AnytimeRun, Finished
from benchmarks.workload import ROOT
from search.config import StudyConfig

NAME = "ray-asha"
NUM_SAMPLES = 10_000  # never reached: the time budget ends the search
WORKER_ENV = {
    "PYTHONPATH": str(ROOT),  # workers unpickle this module's trainable by reference
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def param_space(base: StudyConfig) -> dict[str, Any]:
    """``search.space.suggest``'s space in Tune's samplers, under the product's names."""
    s = base.space
    space: dict[str, Any] = {
        "focal_gamma": tune.uniform(s.focal_gamma.low, s.focal_gamma.high),
        "label_smoothing": tune.uniform(s.label_smoothing.low, s.label_smoothing.high),
        "learning_rate": tune.loguniform(s.learning_rate.low, s.learning_rate.high),
        "epochs": tune.randint(s.epochs.low, s.epochs.high + 1),  # Tune's upper bound is open
    }
    if s.focal_alpha is not None:
        for k in range(len(base.data.labels or [])):
            space[f"focal_alpha_{k}"] = tune.loguniform(s.focal_alpha.low, s.focal_alpha.high)
    if s.backbones:
        space["backbone"] = tune.choice(list(s.backbones))
    return space


def product_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config as plain Python values (Tune may hand back numpy scalars)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "epochs":
            out[key] = int(value)
        elif key == "backbone":
            out[key] = str(value)
        else:
            out[key] = float(value)
    return out


def trainable(config: dict[str, Any], base: StudyConfig, threads: int) -> None:
    """One trial: the product's data and training loop, every evaluation reported to Tune."""
    import torch

    from search.space import params_to_config
    from trainer.data import load_splits
    from trainer.train import train_model

    torch.set_num_threads(threads)  # the trial's share of the CPU budget
    splits = load_splits(base.data)  # cheap: the token cache in base.data.cache_dir is shared
    cfg = params_to_config(product_params(config), base)

    def report(record: Any) -> None:
        # A trial ASHA stops is killed after this report is taken; nothing else to do here.
        tune.report({"accuracy": record.accuracy, "evaluation": record.index, "wall": time.time()})

    train_model(cfg, on_evaluate=report, splits=splits)


def tuner(
    base: StudyConfig, storage: Path, budget_seconds: float, workers: int, threads: int
) -> tune.Tuner:
    """Tune's default search under ASHA, ``workers`` trials of ``threads`` CPUs at once,
    stopped by the time budget."""
    max_t = base.space.epochs.high * base.train.evals_per_epoch
    asha = ASHAScheduler(time_attr="training_iteration", max_t=max_t)
    return tune.Tuner(
        tune.with_resources(
            tune.with_parameters(trainable, base=base, threads=threads), {"cpu": threads}
        ),
        param_space=param_space(base),
        tune_config=tune.TuneConfig(
            metric="accuracy",
            mode="max",
            scheduler=asha,
            num_samples=NUM_SAMPLES,
            time_budget_s=budget_seconds,
            # Without it Tune queues up to 200 pending trials (folders, state, a warning each
            # in the ResultGrid) on a machine that runs ``workers``; sampling is unchanged.
            max_concurrent_trials=workers,
        ),
        run_config=tune.RunConfig(storage_path=str(storage), name=NAME, verbose=0),
    )


def milestones(max_t: int) -> set[int]:
    """The evaluations at which ASHA (grace period 1, reduction factor 4) may stop a trial:
    its rungs 1, 4, 16, ... up to ``max_t`` (``_Bracket``'s MAX_RUNGS)."""
    return {4**k for k in range(max_t.bit_length()) if 4**k <= max_t}


def finished(result: Any, started: float, evals_per_epoch: int, max_t: int) -> Finished | None:
    """One trial's ``Finished`` from its reports; None if it never reported.

    COMPLETE: every evaluation of its own epochs; PRUNED: stopped by ASHA at a milestone;
    STOPPED: cut by the time budget, which, like an Optuna trial that ends after the budget,
    does not count.
    """
    frame = result.metrics_dataframe
    if frame is None or frame.empty or "accuracy" not in frame:
        return None
    params = product_params({k: v for k, v in result.config.items() if not k.startswith("_")})
    accuracies = [a for a in frame["accuracy"].astype(float) if math.isfinite(a)]
    if not accuracies:
        return None
    evaluations = int(frame["evaluation"].max())
    state = "STOPPED"
    if evaluations >= params["epochs"] * evals_per_epoch:
        state = "COMPLETE"
    elif evaluations in milestones(max_t):
        state = "PRUNED"
    return Finished(float(frame["wall"].max()) - started, max(accuracies), params, state)


def short_error(error: BaseException) -> str:
    """The last line of a worker's traceback (the exception itself), at most 300 characters."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def run_ray_asha(
    base: StudyConfig, work: Path, *, budget_seconds: float, workers: int, threads: int
) -> AnytimeRun:
    """Random search under ASHA for ``budget_seconds``: ``workers`` trials at once, the
    ``threads`` split between them."""
    per_trial = max(1, threads // workers)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started_wall, started = time.time(), time.perf_counter()
    # runtime_env, not os.environ: it reaches Ray's workers without changing the env that
    # the other peers' subprocesses inherit from this process.
    ray.init(
        num_cpus=per_trial * workers,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,  # training chatter stays in Ray's session logs
        runtime_env={"env_vars": WORKER_ENV | {"OMP_NUM_THREADS": str(per_trial)}},
    )
    init_seconds = time.perf_counter() - started
    try:
        storage = (work / "ray").resolve()
        grid = tuner(base, storage, budget_seconds, workers, per_trial).fit()
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    trials, errors = [], []
    for result in grid:
        if result.error is not None:
            errors.append(short_error(result.error))
        max_t = base.space.epochs.high * base.train.evals_per_epoch
        one = finished(result, started_wall, base.train.evals_per_epoch, max_t)
        if one is not None:
            trials.append(one)
    extra: dict[str, Any] = {
        "ray_version": ray.__version__,
        "init_seconds": round(init_seconds, 2),
        "trials_launched": len(grid),
        "trials_failed": len(errors),
    }
    if errors:
        extra["first_error"] = errors[0]
    return AnytimeRun(name=NAME, wall_seconds=wall, trials=trials, extra=extra)
