"""The in-run progress bar: drawn on a real terminal (a pty), silent on a file or pipe."""

from __future__ import annotations

import os
import select
from pathlib import Path

import numpy as np
from datasets import Dataset
from transformers import Trainer, TrainerState, TrainingArguments

from tests.conftest import make_tiny_bert
from trainer.progress import ProgressBar


def train_with(bar: ProgressBar, out: Path) -> None:
    """Two epochs of a tiny BERT on random tokens, evaluated once per epoch."""
    rng = np.random.default_rng(0)
    rows = Dataset.from_dict(
        {
            "input_ids": [list(rng.integers(5, 40, size=8)) for _ in range(32)],
            "attention_mask": [[1] * 8] * 32,
            "labels": list(rng.integers(0, 2, size=32)),
        }
    )
    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model=make_tiny_bert(num_labels=2, layers=1),
        args=args,
        train_dataset=rows,
        eval_dataset=rows,
        compute_metrics=lambda p: {
            "accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())
        },
        callbacks=[bar],
    )
    trainer.train()


def read_terminal(master: int) -> str:
    """All the output waiting on a pty (it reaches the master side asynchronously)."""
    chunks = []
    while select.select([master], [], [], 1.0)[0]:
        chunks.append(os.read(master, 1 << 16))
    return b"".join(chunks).decode(errors="replace")


def test_draws_steps_and_accuracy_on_a_terminal(tmp_path: Path) -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as terminal:
        bar = ProgressBar("trial 7", stream=terminal)
        assert bar.enabled
        train_with(bar, tmp_path)
        terminal.flush()
        drawn = read_terminal(master)
    os.close(master)
    assert "trial 7" in drawn
    assert "8/8" in drawn  # 32 rows / batch 8 x 2 epochs = 8 optimizer steps
    assert "acc=" in drawn and "epoch=2.00" in drawn
    assert bar.bar is None  # closed at the end of training


def test_stays_silent_on_a_file(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with log.open("w") as handle:
        bar = ProgressBar("trial 7", stream=handle)
        train_with(bar, tmp_path / "run")
    assert not bar.enabled and log.read_text() == ""


def test_an_unfinished_bar_is_closed_when_the_next_run_begins(tmp_path: Path) -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as terminal:
        bar = ProgressBar("trial 8", stream=terminal)
        bar.on_train_begin(None, TrainerState(max_steps=5), None)
        first = bar.bar
        train_with(bar, tmp_path)  # as after a pruned run, which never reached on_train_end
    os.close(master)
    assert not first.live.is_started and first.tasks[0].completed == 0  # closed by the next run
    assert bar.bar is None
