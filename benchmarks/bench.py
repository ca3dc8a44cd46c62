"""`make bench`: focaltune against the searches users would pick instead, and where time goes.

One invocation, one machine, one data slice, backbone, search space and wall-time budget:

1. anytime search: best validation accuracy against wall time for (a) the seed-style
   loop, (b) ``Trainer.hyperparameter_search(backend="optuna")``, (c) Ray Tune with ASHA,
   (d) focaltune with random sampling and no pruner, (e) focaltune with data stages
   (data-size fidelity), (f) focaltune as shipped; each one's time-to-target and its best
   configuration retrained once and scored on test rows;
2. Trainer overhead: ``train_model``'s Trainer path against a bare PyTorch loop;
3. orchestration: storage + sampler seconds per trial on a 1,000-trial study (SQLite,
   PostgreSQL) as a fraction of a 15 s trial;
4. ``--gpu``: BERT-base-size bf16 throughput and MFU (only where CUDA exists).

Prints one table and writes every figure to ``--out`` (JSON). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/bench.py` puts only benchmarks/ on the path
    sys.path.insert(0, str(ROOT))
# Before transformers is imported (it reads these once): no Hub, no tokenizer thread pools.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.report import print_table, targets  # noqa: E402
from benchmarks.workload import (  # noqa: E402
    NSMC4,
    Sizes,
    describe,
    ensure_backbone,
    machine,
    study_config,
    with_cache,
    write_json,
    write_slices,
    write_test_slice,
)

# Part 1's peers, in the order they run (a-f).
PEERS = (
    "seed-style",
    "hf-hyperparameter-search",
    "ray-asha",
    "focaltune-random",
    "focaltune-stages",
    "focaltune",
)
STAGES = [0.25, 0.5]  # focaltune-stages: one pass over a quarter, then half of the rows first

SIZE_FLAGS = (  # --flag and its help; each sets the Sizes field of the same name
    ("train-rows", "training rows"),
    ("eval-rows", "evaluation rows"),
    ("test-rows", "test rows each peer's best configuration is scored on"),
    ("hidden", "backbone width"),
    ("layers", "backbone layers"),
    ("vocab-size", "backbone tokenizer vocabulary"),
    ("max-length", "tokens per text at most"),
    ("epochs-max", "search space epochs: [1, this]"),
    ("batch-size", "training batch size"),
    ("evals-per-epoch", "evaluations per epoch (focaltune and Ray; the others: 1)"),
    ("workers", "focaltune workers and Ray trials at once (threads split between them)"),
    ("seed", "sampler, data and training seed"),
    ("backbone-texts", "reviews the backbone is built from (0: all of train.csv.gz)"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench.json"), help="JSON results")
    p.add_argument("--work", type=Path, default=Path("runs/bench-work"), help="scratch + caches")
    p.add_argument("--data", type=Path, default=NSMC4, help="folder with nsmc4 train.csv.gz")
    p.add_argument(
        "--backbone-cache",
        type=Path,
        default=Path.home() / ".cache/focaltune/backbones",
        help="where backbones are built once (make backbone's cache)",
    )
    add_size_flags(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--budget-seconds", type=float, default=200.0, help="part 1, per peer")
    p.add_argument("--peers", default=",".join(PEERS), help=f"part 1 peers, of {','.join(PEERS)}")
    p.add_argument("--plot", type=Path, default=Path("benchmarks/anytime.png"), help="part 1")
    p.add_argument("--seed-loader-workers", type=int, default=0, help="seed-style DataLoader")
    p.add_argument("--overhead-repeats", type=int, default=3, help="part 2 runs per path")
    p.add_argument("--overhead-epochs", type=int, default=1, help="part 2 epochs per run")
    p.add_argument("--orch-filled", type=int, default=1000, help="part 3 trials in the study")
    p.add_argument("--orch-trials", type=int, default=10, help="part 3 trials timed")
    p.add_argument("--trial-seconds", type=float, default=15.0, help="part 3: a trial's seconds")
    for part in ("search", "overhead", "orchestration"):
        p.add_argument(f"--skip-{part}", action="store_true", help=f"do not run {part}")
    p.add_argument("--gpu", action="store_true", help="part 4 (needs CUDA)")
    p.add_argument("--gpu-rows", type=int, default=16384, help="part 4 training texts")
    p.add_argument("--gpu-batch", type=int, default=64, help="part 4 batch size")
    p.add_argument("--peak-tflops", type=float, default=None, help="part 4 peak bf16 TFLOP/s")
    return p.parse_args(argv)


def add_size_flags(p: argparse.ArgumentParser) -> None:
    for flag, what in SIZE_FLAGS:
        default = getattr(Sizes(), flag.replace("-", "_"))
        p.add_argument(f"--{flag}", type=int, default=default, help=f"{what} ({default})")


def sizes_from(args: argparse.Namespace) -> Sizes:
    names = Sizes.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return Sizes(**values)


def default_threads() -> int:
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_search(args: argparse.Namespace, sizes: Sizes, base: Any, root: Path) -> dict:
    """Each chosen peer for ``--budget-seconds``, then their figures, plot and retraining."""
    from benchmarks.anytime import plot, summary
    from benchmarks.retrain import retrain_on_test
    from search.study import resolve_config

    base, runs = resolve_config(base), []  # labels read from the data once, for all peers
    for letter, peer in zip("abcdef", PEERS, strict=True):
        if peer not in args.peers.split(","):
            continue
        print(f"[1{letter}] {peer}: {args.budget_seconds:.0f} s ...", flush=True)
        runs.append(run_peer(peer, with_cache(base, root / peer), root / peer, args))
    out = summary(runs, args.budget_seconds)
    plot(runs, args.budget_seconds, out["target_accuracy"], args.plot)
    out["plot"] = str(args.plot)
    test = write_test_slice(args.data, root, sizes.test_rows)
    for run in runs:
        best = run.best(args.budget_seconds)
        if best is not None:
            print(f"[1] retraining the best configuration of {run.name} ...", flush=True)
            out["peers"][run.name]["retrained"] = retrain_on_test(base, best.params, test)
    return out


def run_peer(peer: str, base: Any, work: Path, args: argparse.Namespace) -> Any:
    budget = args.budget_seconds
    if peer == "seed-style":
        from benchmarks.seed_style import run_seed_style

        return run_seed_style(
            base, work, budget_seconds=budget, loader_workers=args.seed_loader_workers
        )
    if peer == "hf-hyperparameter-search":
        from benchmarks.hf_search import run_hf_search

        return run_hf_search(base, work, budget_seconds=budget)
    if peer == "ray-asha":
        from benchmarks.ray_asha import run_ray_asha

        return run_ray_asha(
            base, work, budget_seconds=budget, workers=args.workers, threads=args.threads
        )
    from benchmarks.focaltune_search import run_focaltune

    if peer == "focaltune-random":  # the ablation: what TPE and Hyperband add
        base.study.sampler.type, base.study.pruner.type = "random", "none"
    if peer == "focaltune-stages":  # data-size fidelity against epochs-only
        base.train.data_stages = STAGES
    kw = {"workers": args.workers, "threads": args.threads, "budget_seconds": budget}
    return run_focaltune(base, work, name=peer, **kw)


def run_overhead(args: argparse.Namespace, base: Any) -> dict[str, Any]:
    from benchmarks.bare_loop import overhead_config
    from benchmarks.bare_loop import run_overhead as measure
    from benchmarks.evaluation import run_evaluation
    from benchmarks.speed_items import run_speed_items
    from search.study import resolve_config
    from trainer.config import TrainConfig
    from trainer.data import load_splits

    print("[2] Trainer path vs bare loop ...", flush=True)
    cfg = resolve_config(base)
    train = TrainConfig(data=cfg.data, model=cfg.model, train=cfg.train)
    splits = load_splits(train.data)
    result = measure(train, splits, repeats=args.overhead_repeats, epochs=args.overhead_epochs)
    print("[2] evaluation: the Trainer's order vs length-sorted in order ...", flush=True)
    evaluation = run_evaluation(train, splits, repeats=args.overhead_repeats)
    print("[2] speed items, each without and with ...", flush=True)
    items = run_speed_items(overhead_config(train, 1), splits, repeats=args.overhead_repeats)
    return result | {"evaluation": evaluation, "speed_items": items}


def run_orchestration(args: argparse.Namespace, base: Any, work: Path) -> dict:
    from benchmarks.orchestration import run_orchestration as measure
    from search.study import resolve_config

    typical = args.trial_seconds  # the issue's yardstick; part 1's own trials are in its JSON
    print(f"[3] orchestration on {args.orch_filled} trials (SQLite, PostgreSQL) ...", flush=True)
    kw = {"filled": args.orch_filled, "trials": args.orch_trials, "trial_seconds": typical}
    return {"trial_seconds": typical} | measure(resolve_config(base), work, **kw)


@contextmanager
def timed(seconds: dict[str, float], part: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    seconds[part] = round(time.perf_counter() - started, 1)


def quiet_libraries(threads: int) -> None:
    """Warnings and progress bars off (the seed-style loop loads a model per trial)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # The worker loop's calls, replayed outside Study.optimize in part 3, warn each time.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    import datasets
    import optuna
    import torch
    import transformers

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(threads)


def run_parts(args: argparse.Namespace, sizes: Sizes, base: Any, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"settings": describe(sizes), "machine": machine()}
    seconds: dict[str, float] = {}
    if not args.skip_search:
        with timed(seconds, "search"):
            results["search"] = run_search(args, sizes, base, work)
    if not args.skip_overhead:
        with timed(seconds, "trainer_overhead"):
            results["trainer_overhead"] = run_overhead(args, base)
    if not args.skip_orchestration:
        with timed(seconds, "orchestration"):
            results["orchestration"] = run_orchestration(args, base, work / "orchestration")
    if args.gpu:
        from benchmarks.gpu import run_gpu

        print("[4] GPU throughput and MFU ...", flush=True)
        kw = {"rows": args.gpu_rows, "batch": args.gpu_batch, "peak": args.peak_tflops}
        with timed(seconds, "gpu"):
            results["gpu"] = run_gpu(args.data, work / "gpu", **kw)
    return results | {"part_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.threads = args.threads or default_threads()
    if args.workers > args.threads:  # one thread per worker at least: keep the budgets equal
        print(f"bench: {args.threads} thread(s) for every peer: running {args.threads} worker(s)")
        args.workers = args.threads
    sizes = sizes_from(args)
    quiet_libraries(args.threads)
    work = args.work.resolve()
    train_csv, eval_csv = write_slices(args.data, work, sizes)
    # Built once per size from all training reviews (labels unused), not timed.
    backbone = ensure_backbone(args.data / "train.csv.gz", args.backbone_cache, sizes)
    base = study_config(sizes, train_csv, eval_csv, backbone, work / "token-cache")
    started = time.perf_counter()
    results = run_parts(args, sizes, base, work)
    results["targets"] = targets(results)
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    print_table(results)
    write_json(args.out, results)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
