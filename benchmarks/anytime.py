"""Part 1: best validation accuracy against wall time, for every search a user might pick.

Each peer runs the same workload (``workload.py``: rows, backbone, space, focal loss,
threads) for the same wall-time budget and hands back an ``AnytimeRun``: one
``Finished`` per trial, stamped with the seconds since that search started. From those:

- the anytime curve: the best validation accuracy any of its trials has reached so far
  (a pruned or stopped trial counts with the best evaluation it reached);
- time-to-target: the first moment a peer's curve comes within ``TARGET_GAP`` of the best
  accuracy *any* peer reached;
- the test accuracy of each peer's best configuration, retrained once the same way for all
  (``retrain.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

TARGET_GAP = 0.005  # "as good as the best": within 0.5 points of accuracy


@dataclass
class Finished:
    """One finished trial of one peer."""

    seconds: float  # since that peer's search started (its start-up included)
    accuracy: float  # the best validation accuracy this trial reached
    params: dict[str, Any]  # in ``search.space`` names, so ``params_to_config`` rebuilds it
    state: str  # COMPLETE, PRUNED (by a pruner or scheduler), STOPPED (cut by the budget)


@dataclass
class AnytimeRun:
    """What one peer did within its budget."""

    name: str
    wall_seconds: float
    trials: list[Finished]
    extra: dict[str, Any] = field(default_factory=dict)

    def within(self, budget: float) -> list[Finished]:
        """Trials finished inside the budget: a trial that ran over it does not count."""
        inside = (t for t in self.trials if t.seconds <= budget and t.state != "STOPPED")
        return sorted(inside, key=lambda t: t.seconds)

    def curve(self, budget: float) -> list[tuple[float, float]]:
        """(seconds, best accuracy so far) at each trial that raised it."""
        points: list[tuple[float, float]] = []
        for t in self.within(budget):
            if not points or t.accuracy > points[-1][1]:
                points.append((t.seconds, t.accuracy))
        return points

    def best(self, budget: float) -> Finished | None:
        return max(self.within(budget), key=lambda t: t.accuracy, default=None)

    def time_to(self, target: float, budget: float) -> float | None:
        return next((s for s, acc in self.curve(budget) if acc >= target), None)

    def to_json(self, budget: float) -> dict[str, Any]:
        inside = self.within(budget)
        best = self.best(budget)
        return {
            "wall_seconds": round(self.wall_seconds, 1),
            "trials_finished": len(inside),
            "trials_complete": sum(t.state == "COMPLETE" for t in inside),
            "trials_pruned": sum(t.state == "PRUNED" for t in inside),
            "trials_over_budget": len(self.trials) - len(inside),
            "best_accuracy": None if best is None else round(best.accuracy, 4),
            "best_params": None if best is None else best.params,
            "curve": [(round(s, 1), round(a, 4)) for s, a in self.curve(budget)],
            # "inside": counted (finished inside the budget, not stopped by it); the rounded
            # seconds alone cannot tell a trial 0.04 s over the budget from one on it.
            "trials": [
                asdict(t) | {"seconds": round(t.seconds, 1), "inside": t in inside}
                for t in self.trials
            ],
        } | self.extra


def from_study(trials: list[FrozenTrial], started: datetime) -> list[Finished]:
    """Finished trials of an Optuna study, timed from ``started`` (local, naive: Optuna's)."""
    out = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or t.datetime_complete is None:
            continue
        values = [v for v in t.intermediate_values.values() if math.isfinite(v)]
        if t.value is not None:
            values.append(t.value)
        if not values:
            continue
        seconds = (t.datetime_complete - started).total_seconds()
        out.append(Finished(seconds, max(values), dict(t.params), t.state.name))
    return out


def summary(runs: list[AnytimeRun], budget: float) -> dict[str, Any]:
    """Each peer's figures, the shared target and each one's time to reach it."""
    bests = [b.accuracy for r in runs if (b := r.best(budget)) is not None]
    target = max(bests) - TARGET_GAP if bests else None
    peers = {}
    for run in runs:
        figures = run.to_json(budget)
        figures["time_to_target_seconds"] = None if target is None else run.time_to(target, budget)
        peers[run.name] = figures
    return {"budget_seconds": budget, "target_accuracy": target, "peers": peers}


def plot(runs: list[AnytimeRun], budget: float, target: float | None, path: Path) -> None:
    """One line per peer: best validation accuracy so far against wall seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        points = run.curve(budget)
        if not points:
            continue
        xs = [s for s, _ in points] + [budget]
        ys = [100 * a for _, a in points] + [100 * points[-1][1]]
        ax.step(xs, ys, where="post", label=run.name)
    if target is not None:
        ax.axhline(100 * target, color="grey", linestyle=":", label="target (best - 0.5 pt)")
        ax.set_ylim(bottom=max(ax.get_ylim()[0], 100 * target - 10))  # a first bad trial aside
    ax.set_xlabel("wall seconds since the search started")
    ax.set_ylabel("best validation accuracy so far, %")
    ax.set_xlim(0, budget)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
