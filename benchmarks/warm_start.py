"""Warm start, measured: focaltune on the bench workload, cold and warm-started.

The "new data, same problem" case of ``focaltune study create --warm-start``: a source
study searches the same space on other rows of nsmc4 (``--source-rows`` and as many
validation rows as the workload's, from after the workload's slices: none is shared);
then two studies on the bench workload, one cold, one with the source's top ``--top``
configurations enqueued first. Each runs for ``--budget-seconds`` with the bench's
workers and threads; the figure is each one's time-to-target (within 0.5 pt of the
better of the two) and best validation accuracy. The source's own time is reported
apart: it is what a user already spent.

    .venv/bin/python benchmarks/warm_start.py --out runs/warm_start.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/warm_start.py` puts only benchmarks/ on it
    sys.path.insert(0, str(ROOT))

from benchmarks.bench import (  # noqa: E402
    add_size_flags,
    default_threads,
    quiet_libraries,
    sizes_from,
)
from benchmarks.workload import (  # noqa: E402
    NSMC4,
    ensure_backbone,
    study_config,
    with_cache,
    write_json,
    write_slices,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/warm_start.json"))
    p.add_argument("--work", type=Path, default=Path("runs/warm-start-work"))
    p.add_argument("--data", type=Path, default=NSMC4)
    p.add_argument(
        "--backbone-cache", type=Path, default=Path.home() / ".cache/focaltune/backbones"
    )
    p.add_argument("--budget-seconds", type=float, default=200.0, help="per study")
    p.add_argument("--source-rows", type=int, default=1000, help="the source study's rows")
    p.add_argument("--top", type=int, default=3, help="source configurations enqueued")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    add_size_flags(p)  # the bench's workload flags (--train-rows, --eval-rows, ...)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import optuna

    from benchmarks.anytime import summary
    from benchmarks.focaltune_search import run_focaltune
    from search.warm import best_params
    from storage import open_storage

    args = parse_args(argv)
    threads = args.threads or default_threads()
    args.workers = min(args.workers, threads)  # one thread per worker at least, as in bench
    quiet_libraries(threads)
    sizes = sizes_from(args)
    work = args.work.resolve()
    train_csv, eval_csv = write_slices(args.data, work, sizes)
    backbone = ensure_backbone(args.data / "train.csv.gz", args.backbone_cache, sizes)
    base = study_config(sizes, train_csv, eval_csv, backbone, work / "token-cache")
    skip = sizes.train_rows + sizes.eval_rows
    source_base = base.model_copy(deep=True)
    source_sizes = dataclasses.replace(sizes, train_rows=args.source_rows)
    train, validation = write_slices(args.data, work, source_sizes, skip=skip)
    source_base.data.train, source_base.data.validation = str(train), str(validation)
    # An earlier search of its own: with the workload's seed its first random trials would
    # be the cold study's too, and the warm start would enqueue what cold tries anyway.
    source_base.study.sampler.seed += 1
    kw = {"workers": args.workers, "threads": threads, "budget_seconds": args.budget_seconds}

    started = time.perf_counter()
    print(f"[source] {args.source_rows} other rows, {args.budget_seconds:.0f} s ...", flush=True)
    source = run_focaltune(
        with_cache(source_base, work / "source"), work / "source", name="source", **kw
    )
    url = f"sqlite:///{work / 'source' / 'focaltune.db'}"

    old = optuna.load_study(
        study_name=base.study.name, storage=open_storage(url, heartbeat_interval=None)
    )
    warm_params = best_params(old, args.top)
    print("[cold] ...", flush=True)
    cold = run_focaltune(with_cache(base, work / "cold"), work / "cold", name="cold", **kw)
    print(f"[warm] top {args.top} of the source enqueued ...", flush=True)
    warm_base = with_cache(base, work / "warm")
    warm = run_focaltune(warm_base, work / "warm", name="warm", warm_start=warm_params, **kw)
    result = summary([cold, warm], args.budget_seconds)
    result |= {
        "source": source.to_json(args.budget_seconds),
        "warm_start_params": warm_params,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, result)
    for name in ("cold", "warm"):
        p = result["peers"][name]
        print(
            f"{name}: best {p['best_accuracy']}, time-to-target {p['time_to_target_seconds']} s, "
            f"{p['trials_complete']}/{p['trials_pruned']} complete/pruned"
        )
    print(f"target {result['target_accuracy']}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
