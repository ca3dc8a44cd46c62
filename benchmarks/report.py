"""The issue's targets checked against the results, and the one table bench.py prints."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

Row = tuple[str, str, str, str, str]  # part, measure, a, b, ratio


def _target(name: str, measured: float | None, goal: float, *, at_most: bool = False) -> dict:
    met = None if measured is None else (measured <= goal if at_most else measured >= goal)
    return {"target": name, "measured": measured, "goal": goal, "met": met}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issues that this run measured: the figure, the goal, met or not."""
    found = _search_targets(results["search"]) if results.get("search") else []
    if "trainer_overhead" in results:
        measured = results["trainer_overhead"]["trainer_over_bare"]
        found.append(_target("Trainer path >= 0.9 x bare loop samples/s", measured, 0.9))
    for db, figures in results.get("orchestration", {}).items():
        if isinstance(figures, dict) and "fraction_of_trial" in figures:
            share = round(figures["fraction_of_trial"], 5)
            found.append(
                _target(f"orchestration <= 1% of a trial ({db})", share, 0.01, at_most=True)
            )
    if "gpu" in results:
        found.append(_target("GPU MFU in bf16 >= 40%", results["gpu"]["trainer_mfu"], 0.4))
    return found


def _search_targets(search: dict[str, Any]) -> list[dict[str, Any]]:
    """Time-to-target of focaltune against the seed-style loop (>= 4x) and the transformers
    API (>= 2x); a peer that never reached the target counts the budget (a lower bound)."""
    peers, budget, found = search["peers"], search["budget_seconds"], []
    if "focaltune" not in peers:
        return found
    ours = peers["focaltune"]["time_to_target_seconds"]
    for peer, goal in (("seed-style", 4), ("hf-hyperparameter-search", 2)):
        if peer not in peers:
            continue
        theirs = peers[peer]["time_to_target_seconds"] or budget
        ratio = None if ours is None else theirs / ours  # focaltune never reached it: missed
        target = _target(f"time-to-target {peer} / focaltune >= {goal}", ratio, goal)
        found.append(target | ({"met": False} if ours is None else {}))
        test = [peers[p].get("retrained", {}).get("test_accuracy") for p in (peer, "focaltune")]
        if None not in test:
            gap = round(100 * (test[1] - test[0]), 2)
            found.append(_target(f"test accuracy focaltune - {peer} >= 0 pt", gap, 0))
    return found


def _fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value}{suffix}"


def search_table(search: dict[str, Any]) -> Table:
    """Part 1: one row per peer."""
    table = Table(title=f"part 1: anytime search, {search['budget_seconds']:.0f} s per peer")
    for column in ("peer", "trials C/P", "best val %", "time-to-target s", "test % (retrained)"):
        table.add_column(column, justify="left" if column == "peer" else "right")
    for name, p in search["peers"].items():
        best = p["best_accuracy"]
        test = p.get("retrained", {}).get("test_accuracy")
        table.add_row(
            name,
            f"{p['trials_complete']}/{p['trials_pruned']}",
            _fmt(None if best is None else 100 * best, 2),
            _fmt(p["time_to_target_seconds"], 0),
            _fmt(None if test is None else 100 * test, 2),
        )
    target = search["target_accuracy"]
    table.caption = f"target: {_fmt(None if target is None else 100 * target, 2)} % validation"
    return table


def _trainer_rows(t: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [
        ("2 trainer", "samples/s (a bare loop, b Trainer path)",
         _fmt(t["bare_samples_per_second"]), _fmt(t["trainer_samples_per_second"]),
         _fmt(t["trainer_over_bare"], 3, " b/a")),
    ]  # fmt: skip
    e = t.get("evaluation")
    if e:
        times = e["seconds_per_evaluation"]
        product = next(iter(times))  # the configured batch size, as train_model sets it up
        rows.append(
            ("2 eval", f"s/evaluation (a {product}, b {e['best']})", _fmt(times[product], 3),
             _fmt(times[e["best"]], 3), _fmt(e["speedup_of_best"], 2, " a/b"))
        )  # fmt: skip
    for name, item in t.get("speed_items", {}).items():
        a, b = item["without"], item["with"]
        # samples/s: how many times faster; seconds: how many a trial saves
        gain = _fmt(b / a, 2, "x") if "samples" in name else _fmt(a - b, 3, " s saved")
        rows.append(("2 item", f"{name} (a without, b with)", _fmt(a, 3), _fmt(b, 3), gain))
    return rows


def _orchestration_rows(orch: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for db in ("sqlite", "postgresql"):
        o = orch.get(db)
        if not isinstance(o, dict):
            continue
        if "skipped" in o:
            rows.append((f"3 {db}", "skipped", o["skipped"][:40], "", ""))
            continue
        measure = f"s/trial (a storage+sampler, b trial) at {o['trials_in_study']} trials"
        a = _fmt(o["storage_sampler_seconds_per_trial"], 3)
        share = _fmt(100 * o["fraction_of_trial"], 2, " %")
        rows.append((f"3 {db}", measure, a, _fmt(orch["trial_seconds"], 2), share))
    return rows


def _gpu_rows(g: dict[str, Any]) -> list[Row]:
    measure = f"samples/s bf16 (a bare, b Trainer) {g['device']}"
    mfu = _fmt(100 * g["trainer_mfu"], 1, " % MFU")
    bare, hf = _fmt(g["bare_samples_per_second"]), _fmt(g["trainer_samples_per_second"])
    return [("4 gpu", measure, bare, hf, mfu)]


def print_table(results: dict[str, Any]) -> None:
    table = Table(title="focaltune benchmark")
    for column in ("part", "measure", "a", "b", "ratio"):
        table.add_column(column, justify="left" if column in ("part", "measure") else "right")
    rows: list[Row] = []
    if "trainer_overhead" in results:
        rows += _trainer_rows(results["trainer_overhead"])
    rows += _orchestration_rows(results.get("orchestration", {}))
    if "gpu" in results:
        rows += _gpu_rows(results["gpu"])
    for row in rows:
        table.add_row(*row)
    console = Console(width=max(Console().width, 110))
    if results.get("search"):
        console.print(search_table(results["search"]))
    console.print(table)
    for t in results.get("targets", []):
        mark = {True: "met", False: "MISSED", None: "-"}[t["met"]]
        console.print(f"  target {t['target']}: measured {_fmt(t['measured'], 3)} -> {mark}")
