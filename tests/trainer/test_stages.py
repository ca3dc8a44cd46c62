"""Data stages: stratified nested subsets, and a real run that trains on them first."""

from __future__ import annotations

import numpy as np
import pytest

from search.config import parse_study_config
from search.study import make_pruner
from tests.trainer.runs import small_config
from trainer.config import TrainSettings
from trainer.data import load_splits
from trainer.stages import StagePlan, stratified_order
from trainer.train import build_trainer, stage_plan, train_model


def test_every_prefix_of_the_order_keeps_the_class_shares() -> None:
    labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2, 3], [500, 90, 250, 160]))
    order = stratified_order(labels, seed=3)
    assert sorted(order) == list(range(len(labels)))
    shares = np.bincount(labels) / len(labels)
    for m in (10, 37, 100, 250, 999):
        counts = np.bincount(labels[order[:m]], minlength=4)
        assert np.abs(counts - m * shares).max() <= 1, (m, counts)
    # Fixed by the seed (every trial gets the same stages), and a new seed gives new ones.
    assert (stratified_order(labels, seed=3) == order).all()
    assert not (stratified_order(labels, seed=4) == order).all()


def test_stages_are_whole_steps_and_evaluations_fall_at_their_ends() -> None:
    plan = StagePlan.make(np.arange(300)[::-1], [0.25, 0.5], epochs=2, batch=32, evals_per_epoch=1)
    assert [len(s) for s in plan.segments] == [96, 160, 300, 300]  # 75 and 150 rounded up
    assert set(plan.segments[0]) < set(plan.segments[1])  # nested: prefixes of one order
    # 96 / 32 = 3 steps, then 5 more; the epochs end after 556 and 856 rows.
    assert plan.schedule() == {3: 0.32, 8: 160 / 300, 18: 1.0, 27: 2.0}


def test_a_staged_run_trains_on_the_nested_subsets_then_on_every_row(
    tiny_backbone, nsmc_csv, tmp_path
) -> None:
    train_model(small_config(tiny_backbone, nsmc_csv, tmp_path))  # fills the token cache
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*"))
    cfg = small_config(tiny_backbone, nsmc_csv, tmp_path, data_stages=[0.25, 0.5])
    cfg.params.epochs = 2
    splits = load_splits(cfg.data)
    plan = stage_plan(cfg, splits)
    trainer = build_trainer(cfg, splits, str(tmp_path / "run"), plan=plan)
    # The rows in the order the Trainer's loader feeds them to the model.
    stream = list(trainer.get_train_dataloader().batch_sampler.sampler)
    quarter, half, rest = stream[:96], stream[96:256], stream[256:]
    assert sorted(quarter) == sorted(plan.segments[0])  # one pass over the quarter, no other row
    assert sorted(half) == sorted(plan.segments[1]) and set(quarter) < set(half)
    assert sorted(rest[:300]) == sorted(rest[300:]) == list(range(300))  # then whole epochs
    shares = np.bincount(splits.train_labels[quarter], minlength=4) / 96
    assert np.abs(shares - splits.label_distribution("train")).max() < 0.02  # stratified

    result = train_model(cfg)
    assert [r.step for r in result.history] == [3, 8, 18, 27]  # after each stage, each epoch
    assert [round(r.epoch, 2) for r in result.history] == [0.32, 0.53, 1.0, 2.0]
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*")) == cached  # tokens reused


def test_hyperband_counts_the_stage_evaluations() -> None:
    raw = {
        "study": {"name": "s"},
        "data": {"train": "t.csv"},
        "model": {"name_or_path": "m"},
        "train": {"data_stages": [0.25, 0.5], "evals_per_epoch": 2},
        "space": {"epochs": [1, 3]},
    }
    assert make_pruner(parse_study_config(raw, "c.yaml"))._max_resource == 2 + 3 * 2


@pytest.mark.parametrize("stages", [[0.5, 0.25], [0.5, 0.5], [0.0], [1.0]])
def test_stages_must_be_growing_fractions_below_one(stages) -> None:
    with pytest.raises(ValueError, match="data_stages"):
        TrainSettings(data_stages=stages)
