"""`make quality` at smoke size: every stage runs and the JSON holds what the table shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import NSMC4, ROOT

STAGES = {"backbone", "train", "search", "export", "final", "predict"}


@pytest.mark.slow
@pytest.mark.process
def test_quality_smoke_run_writes_every_system_and_stage(tmp_path: Path) -> None:
    out = tmp_path / "q"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--smoke", "--out", str(out)]
    cmd += ["--nsmc4", str(NSMC4), "--cache", str(tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "quality.json").read_text())
    systems = [row["system"] for row in result["rows"]]
    for expected in ("majority class", "TF-IDF char 1-3 + LR", "focaltune train"):
        assert any(s.startswith(expected) for s in systems), systems
    assert sum(s.startswith("member ") for s in systems) >= 1
    assert {"ensemble best", "ensemble uniform", "ensemble tuned"} <= set(systems)
    served = [row for row in result["rows"] if row["system"].startswith("served bundle")]
    assert len(served) == 1
    for row in result["rows"]:
        assert 0 <= row["accuracy"] <= 1 and len(row["recall"]) == 4
        assert sum(row["pred_distribution"]) == pytest.approx(1, abs=1e-3)
    assert set(result["seconds"]) >= STAGES
    # The served row is scored from predict's own output file, row by row.
    pred, test = pd.read_csv(out / "pred.csv"), pd.read_csv(out / "test.csv")
    assert len(pred) == len(test) == result["sizes"]["test"]
    # Two computations: predict's labels come from its in-memory probabilities, the row's
    # argmax from the CSV's printed ones; a near-tie may round apart, so allow one row.
    correct = (pred.label == test.label).mean()
    assert served[0]["accuracy"] == pytest.approx(correct, abs=1.5 / len(test))
    assert "| served bundle" in (out / "quality.md").read_text(encoding="utf-8")
