"""Signals raise inside a trial's objective and wait for the next check anywhere else."""

from __future__ import annotations

import os
import signal

import pytest

from search.stop import SIGNALS, StopRequested, StopSignals


@pytest.fixture
def stops():
    saved = {s: signal.getsignal(s) for s in SIGNALS}
    stops = StopSignals()
    stops.install()
    yield stops
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_a_signal_outside_a_trial_waits_for_the_next_check(stops: StopSignals) -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # e.g. while the sampler runs inside study.ask
    assert stops.reason == "stopped by signal SIGTERM"  # noted, nothing raised here
    with pytest.raises(StopRequested, match="SIGTERM"):
        stops.check()
    with pytest.raises(StopRequested), stops.raising():  # a trial does not even start
        raise AssertionError("the objective ran after a stop request")


def test_a_signal_inside_a_trial_raises_at_once(stops: StopSignals) -> None:
    stops.check()  # nothing pending
    with pytest.raises(StopRequested, match="SIGINT"), stops.raising():
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal did not interrupt the objective")
    os.kill(os.getpid(), signal.SIGINT)  # after the trial: noted again, not raised
    assert stops.reason == "stopped by signal SIGINT"
