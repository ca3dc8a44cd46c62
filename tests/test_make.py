"""What the Makefile promises in the README: `make search NSMC4=/other/folder` reads there."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.conftest import NSMC4, ROOT


def test_the_demo_study_reads_the_data_folder_given_as_nsmc4(tmp_path: Path) -> None:
    folder = NSMC4.resolve()
    command = ["make", "-s", "demo-config", f"RUNS={tmp_path}", f"NSMC4={folder}"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=60)
    data = yaml.safe_load((tmp_path / "demo.yaml").read_text(encoding="utf-8"))["data"]
    assert data["train"] == f"{folder}/train.csv.gz"
    assert data["test"] == f"{folder}/test.csv.gz"
