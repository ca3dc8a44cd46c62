"""W&B in offline mode: two trials through the real reporter, two runs read back from disk.

The runs are written by a separate process with no W&B account (a fresh HOME, no API
key) and, where the kernel allows it, no network at all (``unshare -n``). Offline runs
are a single transaction log (``run-*.wandb``); wandb 0.31 has no Python reader for it,
so the test reads its simple block format here and decodes each record with W&B's own
protobuf schema.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from wandb.proto import wandb_internal_pb2

from search.tracking import evaluation_rows
from tests.search.conftest import KOREAN, eval_records

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-that-must-not-leak"
WRITE_RUNS = """
import sys
from tests.search.conftest import finished_study, study_config
cfg = study_config(sys.argv[2], wandb={"enabled": True, "mode": "offline"})
finished_study(sys.argv[1], cfg)
# Online mode with no account: W&B fails once, is turned off, the trials are unaffected.
online = study_config(sys.argv[2], name="online", wandb={"enabled": True, "mode": "online"})
finished_study(sys.argv[1], online)
"""
BLOCK = 32 * 1024


def wandb_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Records of a W&B transaction log: a 7-byte header, then LevelDB-style log blocks."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer or padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk of a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_run(path: Path) -> dict:
    run, history, summary = None, {}, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            row = {item.nested_key[0]: json.loads(item.value_json) for item in record.history.item}
            history[row["_step"]] = row
        elif kind == "summary":
            for item in record.summary.update:
                if item.key:
                    summary[item.key] = json.loads(item.value_json)
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    return {"run": run, "config": config, "history": history, "summary": summary}


def no_network_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []  # no permission for a network namespace: offline mode is still checked


@pytest.mark.process
def test_offline_runs_one_per_trial_grouped_by_study_and_online_failure_is_harmless(
    tmp_path: Path, nsmc_csv
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT), WANDB_SILENT="true")
    # The command line carries a password, as a worker's --storage may: it must stay out.
    secret_arg = f"--storage=postgresql+psycopg://user:{PASSWORD}@db.example/focaltune"
    command = [sys.executable, "-c", WRITE_RUNS, url, str(nsmc_csv(300)), secret_arg]
    done = subprocess.run(
        no_network_prefix() + command, cwd=tmp_path, env=env, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    study = optuna.load_study(study_name="watch", storage=url)
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    runs = {r["run"].display_name: r for r in map(read_run, files)}
    assert sorted(runs) == ["trial-0", "trial-1"]
    for trial in study.trials:
        got = runs[f"trial-{trial.number}"]
        assert got["run"].run_group == "watch" and got["run"].job_type == "trial"
        assert {k: got["config"][k] for k in trial.params} == trial.params
        steps = sorted(k for k in got["history"] if k in trial.intermediate_values)
        assert steps == sorted(trial.intermediate_values)
        for step, value in trial.intermediate_values.items():
            assert got["history"][step]["accuracy"] == pytest.approx(value)
        assert got["summary"]["best_accuracy"] == pytest.approx(
            max(trial.intermediate_values.values())
        )
    assert runs["trial-0"]["summary"]["state"] == "completed"
    assert runs["trial-1"]["summary"]["state"] == "pruned"
    assert runs["trial-1"]["summary"]["pruned"] is True
    assert list(runs["trial-1"]["run"].tags) == ["pruned"]
    online = optuna.load_study(study_name="online", storage=url)
    assert [t.state.name for t in online.trials] == ["COMPLETE", "PRUNED"]
    assert done.stderr.decode().count("W&B off for this worker") == 1
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert leaked == []


def test_evaluation_rows_are_flat_per_class_metrics_by_evaluation_index() -> None:
    records = eval_records([0.2, 0.7])
    rows = evaluation_rows(records, KOREAN)
    assert [step for step, _ in rows] == [1, 2]
    step, row = rows[1]
    assert row["accuracy"] == records[1].accuracy
    assert row["recall/부정"] == records[1].metrics["recall"][1]
    assert row["pred_distribution/매우 긍정"] == records[1].metrics["pred_distribution"][3]
    assert all(isinstance(v, float) for v in row.values())
