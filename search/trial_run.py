"""One trial, as ``study.optimize(n_trials=1)`` runs it, without its two-step repairs.

Optuna's ``study.optimize`` fails an interrupted trial (``KeyboardInterrupt``: the worker's
SIGTERM; or the database gone for longer than the worker waits) in one transaction, and the
worker then enqueued its retry in a second; a worker killed between the two (Kubernetes
sends SIGKILL after the grace period; the database may be slow just then) left a FAIL
trial with no retry, which nothing looks at again. Here an interrupted trial stays RUNNING
and its heartbeat stops; the worker then fails it and enqueues its retry in one
transaction (``storage.stale.fail_and_retry``), and if the worker dies first, the trial is
stale and the next worker does the same. ``study.optimize`` also runs Optuna's two-step
stale repair before each trial (see ``storage.stale``); the loop runs its own.

Everything else is Optuna's: ``study.ask``, the heartbeat thread, ``study.tell`` (which
turns a pruned trial's last report into its value and fails a NaN).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread  # what study.optimize uses
from optuna.trial import FrozenTrial, TrialState

from storage.errors import StorageUnreachable

log = logging.getLogger(__name__)


def run_trial(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    catch: tuple[type[Exception], ...],
) -> FrozenTrial:
    """Ask, run ``objective`` with heartbeats, tell. An exception in ``catch`` fails only the
    trial; any other is raised after failing it; an interruption leaves it RUNNING."""
    with warnings.catch_warnings():
        # Optuna warns that heartbeats belong to study.optimize: its heartbeat thread is here.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        trial = study.ask()
    value, state, failure = None, None, None
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except (KeyboardInterrupt, StorageUnreachable):
            raise  # interrupted, still RUNNING: the worker hands it back, or it goes stale
        except Exception as err:
            state, failure = TrialState.FAIL, err
    # Told once the heartbeats have stopped, as study.optimize does.
    frozen = study.tell(trial, value, state=state)
    if failure is not None:  # with its traceback, as study.optimize logs it
        log.warning("trial %d failed: %r", trial.number, failure, exc_info=failure)
        if not isinstance(failure, catch):
            raise failure
    return frozen
