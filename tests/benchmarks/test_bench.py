"""`make bench` at a tiny size: every part runs and its figures agree with each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench import PEERS
from tests.conftest import NSMC4, ROOT

TINY = ["--budget-seconds", "12", "--train-rows", "300", "--eval-rows", "100", "--hidden", "32"]
TINY += ["--layers", "1", "--vocab-size", "1000", "--epochs-max", "2", "--workers", "1"]
TINY += ["--test-rows", "200"]
TINY += ["--threads", "1", "--orch-filled", "20", "--orch-trials", "2", "--overhead-repeats", "1"]
TINY += ["--backbone-texts", "2000"]  # the standard recipe (corpus vectors) on 2,000 reviews


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.process
def test_bench_runs_every_part_and_writes_consistent_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), *TINY]
    cmd += ["--data", str(NSMC4), "--work", str(tmp_path / "work"), "--out", str(out)]
    cmd += [
        "--backbone-cache",
        str(tmp_path / "backbones"),
        "--plot",
        str(tmp_path / "anytime.png"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "focaltune benchmark" in done.stdout
    [backbone] = (tmp_path / "backbones").iterdir()
    built = json.loads((backbone / "backbone.json").read_text())
    assert built["settings"]["embedding_init"] == "corpus"

    results = json.loads(out.read_text())
    search = results["search"]
    budget = search["budget_seconds"]
    assert list(search["peers"]) == list(PEERS)  # every peer ran, in order
    assert (tmp_path / "anytime.png").stat().st_size > 0
    ray = search["peers"]["ray-asha"]
    assert ray["trials_launched"] >= 1 and ray["trials_failed"] == 0, ray.get("first_error")
    for name, peer in search["peers"].items():
        trials = peer["trials"]
        # A search's first trial always runs, except under Tune, which stops it at the budget.
        assert trials or name == "ray-asha", name
        assert peer["trials_finished"] + peer["trials_over_budget"] == len(trials)
        inside = [t for t in trials if t["inside"]]
        for t in trials:  # what counts: finished by the budget, not stopped by it
            if t["state"] == "STOPPED" or abs(t["seconds"] - budget) > 0.1:
                assert t["inside"] == (t["state"] != "STOPPED" and t["seconds"] <= budget)
        if inside:  # the curve is the running best of what finished inside the budget
            assert peer["best_accuracy"] == pytest.approx(
                max(t["accuracy"] for t in inside), abs=1e-4
            )
            assert peer["curve"][-1][1] == peer["best_accuracy"]
            assert 0 <= peer["retrained"]["test_accuracy"] <= 1
        for t in trials:
            assert set(t["params"]) >= {"focal_gamma", "label_smoothing", "learning_rate", "epochs"}
    seed = search["peers"]["seed-style"]
    assert seed["trials_pruned"] == 0  # seed-style never prunes
    assert search["peers"]["focaltune-random"]["trials_pruned"] == 0  # the ablation: no pruner
    reached = [p for p in search["peers"].values() if p["time_to_target_seconds"] is not None]
    if search["target_accuracy"] is not None:
        assert reached  # the peer that set the target reached it

    overhead = results["trainer_overhead"]
    assert overhead["bare_samples_per_second"] > 0 < overhead["trainer_samples_per_second"]
    assert overhead["evaluation"]["same_accuracy"]  # evaluation order changes only the time
    items = overhead["speed_items"]
    assert set(items) == {
        "token_cache_s",
        "length_grouping_samples_per_s",
        "backbone_in_memory_s",
        "no_checkpoint_s",
        "frozen_startup_gc_s",
    }
    assert all(item["without"] > 0 and item["with"] >= 0 for item in items.values())
    assert items["token_cache_s"]["with"] < items["token_cache_s"]["without"]  # read, not made

    for db in ("sqlite", "postgresql"):
        figures = results["orchestration"][db]
        assert figures["trials_in_study"] == 20
        per_call = figures["median_seconds_per_trial"]
        assert figures["storage_sampler_seconds_per_trial"] >= per_call["ask"] > 0
        statements = figures["statements_per_trial"]  # counted on the worker's own engine
        assert statements["ask"] >= 8  # at least one write per suggested parameter
        assert statements["report"] >= figures["evaluations_per_trial"]  # a write per report
    assert any(t["target"].startswith("Trainer") for t in results["targets"])
