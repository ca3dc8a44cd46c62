"""What a study looks like now: counts by state, best trial, running trials, top 5."""

from __future__ import annotations

import datetime as dt
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from search.export import rank_trials


def _running(trial: optuna.trial.FrozenTrial, now: dt.datetime) -> dict[str, Any]:
    steps = trial.intermediate_values
    start = trial.datetime_start or now
    return {
        "number": trial.number,
        "last_step": max(steps) if steps else None,
        "last_accuracy": steps[max(steps)] if steps else None,
        "age_seconds": round((now - start).total_seconds(), 1),
        "params": trial.params,
    }


def study_status(study: optuna.Study, budget: int | None = None) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    now = dt.datetime.now()
    top = rank_trials(study)[:5]
    return {
        "study": study.study_name,
        "budget": budget,
        "counts": counts,
        "finished": counts["COMPLETE"] + counts["PRUNED"],
        "best": None
        if not top
        else {"number": top[0].number, "value": top[0].value, "params": top[0].params},
        "running": [_running(t, now) for t in trials if t.state == TrialState.RUNNING],
        "top": [
            {
                "number": t.number,
                "value": t.value,
                "params": t.params,
                "macro_f1": t.user_attrs.get("macro_f1"),
                "best_epoch": t.user_attrs.get("best_epoch"),
            }
            for t in top
        ],
    }


def _fmt(params: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def print_status(status: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    c = status["counts"]
    budget = f"/{status['budget']}" if status["budget"] else ""
    console.print(
        f"[bold]{status['study']}[/]: finished {status['finished']}{budget} — "
        + ", ".join(f"{k.lower()} {v}" for k, v in c.items() if v)
    )
    if status["best"]:
        b = status["best"]
        console.print(f"best: trial {b['number']} accuracy {b['value']:.4f}  {_fmt(b['params'])}")
    for r in status["running"]:
        acc = "-" if r["last_accuracy"] is None else f"{r['last_accuracy']:.4f}"
        console.print(
            f"running: trial {r['number']} step {r['last_step']} acc {acc} age {r['age_seconds']}s"
        )
    table = Table("trial", "accuracy", "macro-F1", "best epoch", "params", title="top 5")
    for t in status["top"]:
        f1 = "-" if t["macro_f1"] is None else f"{t['macro_f1']:.4f}"
        table.add_row(
            str(t["number"]), f"{t['value']:.4f}", f1, str(t["best_epoch"]), _fmt(t["params"])
        )
    console.print(table)
