"""MLM pretraining as a long job: checkpoints, --resume after kill -9, --time-budget, the
progress line and the loss curve; tiny BERTs on real nsmc4 reviews."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import trainer.backbone.mlm as mlm
from tests.trainer.test_backbone import focaltune, focaltune_command
from trainer.backbone import build_backbone, cached_backbone
from trainer.backbone.checkpoint import checkpoint_folder
from trainer.backbone.settings import BackboneSettings

SMALL = {"vocab_size": 500, "layers": 1, "hidden": 32, "heads": 2, "max_length": 32}
# 300 texts (15 held out), batches of 16: 18 steps an epoch, 54 in all.
MLM = {"mlm_epochs": 3, "mlm_batch_size": 16, "seed": 5}
CRASH_STEP = 30
CLI_SMALL = ["--vocab-size", "500", "--layers", "1", "--hidden", "32", "--max-length", "32"]


class Killed(Exception):
    """Stands for a kill in the middle of training."""


def crash_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Fault injection: training dies when it reaches ``step`` (1-based), a kill's effect
    in-process; the subprocess test below kills a real process."""
    real, calls = mlm.train_step, iter(range(1, 10**9))

    def step_or_die(*args: object, **kwargs: object) -> float | None:
        if next(calls) == step:
            raise Killed(f"killed at step {step}")
        return real(*args, **kwargs)

    monkeypatch.setattr(mlm, "train_step", step_or_die)


def saved_step(out: Path) -> int:
    state = torch.load(checkpoint_folder(out) / "state.pt", weights_only=True)
    return state["state"]["step"]


def report(folder: Path, name: str = "backbone.json") -> dict:
    return json.loads((folder / name).read_text())


def tree(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its modification time, to show nothing changed."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture(scope="module")
def train(nsmc_csv) -> Path:
    return nsmc_csv(300, offset=2000)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, train: Path) -> Path:
    return build_backbone(train, tmp_path_factory.mktemp("whole") / "bb", **SMALL, **MLM)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, train: Path) -> Path:
    """The checkpoint folder of a build that saved one after every step and died at
    CRASH_STEP (tests copy it: resuming consumes it)."""
    out = tmp_path_factory.mktemp("interrupted") / "bb"
    with pytest.MonkeyPatch.context() as patch:
        crash_at(patch, CRASH_STEP)
        with pytest.raises(Killed):
            build_backbone(train, out, checkpoint_minutes=0, **SMALL, **MLM)
    return checkpoint_folder(out)


def test_a_resumed_build_ends_as_the_uninterrupted_one(
    interrupted: Path, uninterrupted: Path, train: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bb"
    shutil.copytree(interrupted, checkpoint_folder(out))
    assert saved_step(out) == CRASH_STEP - 1
    build_backbone(train, out, resume=True, **SMALL, **MLM)
    # Same batches, masks and dropout from the checkpoint's step on: the same weights and
    # curve up to float32 rounding.
    whole = load_file(uninterrupted / "model.safetensors")
    resumed = load_file(out / "model.safetensors")
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=1e-4, atol=1e-5)
    curves = report(uninterrupted, "mlm_curve.json"), report(out, "mlm_curve.json")
    assert curves[1]["steps"] == curves[0]["steps"]
    torch.testing.assert_close(curves[1]["loss"], curves[0]["loss"], rtol=1e-3, atol=1e-3)
    assert report(out)["mlm"]["resumed_from_step"] == CRASH_STEP - 1
    assert not checkpoint_folder(out).exists()  # a finished build removes it


def test_the_curve_json_and_png_agree_with_the_steps_done(uninterrupted: Path) -> None:
    curve, done = report(uninterrupted, "mlm_curve.json"), report(uninterrupted)["mlm"]
    columns = ("steps", "loss", "learning_rate", "elapsed_seconds")
    assert len({len(curve[name]) for name in columns}) == 1
    assert curve["steps"] == sorted(set(curve["steps"])) and curve["steps"][-1] == 54
    assert done == {key: curve[key] for key in done}
    assert (done["steps_done"], done["stopped_by"]) == (54, "plan")
    assert curve["held_out_loss"]["after"] < curve["held_out_loss"]["before"]
    image = matplotlib.image.imread(uninterrupted / "mlm_curve.png")
    assert image.shape[0] > 200 and image[..., :3].std() > 0.05  # drew something


def test_a_time_budget_stops_early_with_a_usable_backbone(
    train: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trainer.backbone")
    # 1000 epochs (18,000 steps) cannot fit in 3 seconds on any machine.
    settings = {**SMALL, **MLM, "mlm_epochs": 1000, "time_budget": 0.05}
    out = build_backbone(train, tmp_path / "bb", **settings)
    done = report(out)["mlm"]
    assert done["stopped_by"] == "time budget" and done["steps_planned"] == 18_000
    assert 0 < done["steps_done"] <= done["steps_scheduled"] < done["steps_planned"]
    curve = report(out, "mlm_curve.json")
    assert curve["steps"][-1] == done["steps_done"]
    # Re-planned: the rate decays towards the budget's end instead of staying at its peak.
    assert curve["learning_rate"][-1] < max(curve["learning_rate"])
    model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=4)
    batch = AutoTokenizer.from_pretrained(out)(["다시 보고 싶다"], return_tensors="pt")
    assert torch.isfinite(model(**batch).logits).all()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MLM step")]
    line = r"MLM step \d+/\d+ \(\d+%\), loss \d+\.\d\d, [\d.]+ steps/s, elapsed \w+, ETA \w+"
    assert lines and all(re.match(line, text) for text in lines)


def test_resume_continues_a_cached_build(train: Path, tmp_path: Path) -> None:
    settings = BackboneSettings(**SMALL, **MLM)
    with pytest.MonkeyPatch.context() as patch:
        crash_at(patch, CRASH_STEP)
        with pytest.raises(Killed):
            cached_backbone(train, tmp_path, settings, checkpoint_minutes=0)
    entry, built = cached_backbone(train, tmp_path, settings, resume=True)
    assert built and report(entry)["mlm"]["resumed_from_step"] == CRASH_STEP - 1
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]


@pytest.fixture
def checkpointed(interrupted: Path, tmp_path: Path) -> Path:
    """``tmp_path/bb``'s build, interrupted: its checkpoint lies beside it."""
    shutil.copytree(interrupted, checkpoint_folder(tmp_path / "bb"))
    return tmp_path / "bb"


@pytest.mark.process
@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--resume", "--out", "{tmp}/new"], ["--resume: no interrupted build", ".new.checkpoint"]),
        (["--out", "{tmp}/bb"], ["was interrupted", ".bb.checkpoint", "pass --resume"]),
        (["--resume", "--out", "{tmp}/bb", "--hidden", "16"], ["hidden=32 (now 16)"]),
        (["--resume", "--out", "{tmp}/bb", "--train", "{other}"], ["the texts: 300", "now 200"]),
    ],
    ids=["no-checkpoint", "checkpoint-without-resume", "other-settings", "other-texts"],
)  # fmt: skip
def test_refused_resumes_exit_2_with_one_line_and_change_nothing(
    flags: list[str], words: list[str], checkpointed: Path, train: Path, nsmc_csv
) -> None:
    tmp, before = checkpointed.parent, tree(checkpointed.parent)
    given = [f.format(tmp=tmp, other=nsmc_csv(200, offset=2000)) for f in flags]
    mlm_flags = ["--mlm-epochs", "3", "--mlm-batch-size", "16", "--seed", "5"]
    done = focaltune("backbone", "build", "--train", str(train), *CLI_SMALL, *mlm_flags, *given)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert all(word in done.stderr for word in words), done.stderr
    assert tree(tmp) == before


def wait_for_checkpoint(out: Path, process: subprocess.Popen, step: int) -> int:
    """The step of the checkpoint once it reaches ``step``; the build must still run."""
    state = checkpoint_folder(out) / "state.pt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, "the build ended before it could be killed"
        if state.is_file() and (saved := saved_step(out)) >= step:
            return saved
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of step >= {step} in 240 s")


@pytest.fixture
def build_process(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:  # a failed test must not leave its build running
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.process
@pytest.mark.slow
def test_a_build_killed_by_sigkill_resumes_from_its_checkpoint(
    train: Path, tmp_path: Path, build_process: list[subprocess.Popen]
) -> None:
    out = tmp_path / "bb"
    # 40 epochs: 720 steps, far more than run before the kill (checkpoints every 0.6 s).
    flags = ["--train", str(train), "--out", str(out), *CLI_SMALL, "--mlm-epochs", "40",
             "--mlm-batch-size", "16", "--checkpoint-minutes", "0.01"]  # fmt: skip
    process = subprocess.Popen(
        [*focaltune_command(), "backbone", "build", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    build_process.append(process)
    wait_for_checkpoint(out, process, 150)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL and not out.exists()
    step = saved_step(out)  # what is on disk after the kill (a later save may have landed)

    done = focaltune("backbone", "build", *flags, "--resume")
    assert done.returncode == 0, done.stderr
    assert f"MLM resumes at step {step}/720" in done.stderr  # INFO shows without --verbose
    mlm_report = report(out)["mlm"]
    assert (mlm_report["resumed_from_step"], mlm_report["steps_done"]) == (step, 720)
    curve = report(out, "mlm_curve.json")
    untrained = curve["held_out_loss"]["before"]
    after_resume = [loss for s, loss in zip(curve["steps"], curve["loss"], strict=True) if s > step]
    # The curve goes on from the checkpoint's loss, not from an untrained model's (~6.2).
    assert after_resume[0] < untrained - 0.5
    model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=4)
    batch = AutoTokenizer.from_pretrained(out)(["연기 정말 최고"], return_tensors="pt")
    assert torch.isfinite(model(**batch).logits).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bb"]  # checkpoint gone
