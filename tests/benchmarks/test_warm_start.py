"""benchmarks/warm_start.py at a tiny size: source, cold and warm studies, and the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import NSMC4, ROOT

TINY = ["--budget-seconds", "10", "--train-rows", "300", "--eval-rows", "100"]
TINY += ["--source-rows", "300", "--hidden", "32", "--layers", "1", "--vocab-size", "1000"]
TINY += ["--epochs-max", "2", "--workers", "1", "--threads", "1", "--backbone-texts", "2000"]


@pytest.mark.slow
@pytest.mark.process
def test_warm_study_tries_the_source_configurations_first(tmp_path: Path) -> None:
    out, work = tmp_path / "warm.json", tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "warm_start.py"), *TINY, "--top", "2"]
    cmd += ["--data", str(NSMC4), "--work", str(work), "--out", str(out)]
    cmd += ["--backbone-cache", str(tmp_path / "backbones")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads(out.read_text())
    assert set(result["peers"]) == {"cold", "warm"}
    enqueued = result["warm_start_params"]
    assert 1 <= len(enqueued) <= 2
    source = optuna.load_study(
        study_name="bench", storage=f"sqlite:///{work / 'source/focaltune.db'}"
    )
    complete = [t for t in source.trials if t.state == optuna.trial.TrialState.COMPLETE]
    top = max(t.value for t in complete)
    assert any(t.params == enqueued[0] and t.value == top for t in complete)  # its best first
    warm = optuna.load_study(study_name="bench", storage=f"sqlite:///{work / 'warm/focaltune.db'}")
    first = sorted(warm.trials, key=lambda t: t.number)[: len(enqueued)]
    for trial, params in zip(first, enqueued, strict=True):
        assert trial.params == pytest.approx(params)  # tried before anything sampled
    cold = optuna.load_study(study_name="bench", storage=f"sqlite:///{work / 'cold/focaltune.db'}")
    assert all(t.params != enqueued[0] for t in cold.trials)  # the source sampled elsewhere
