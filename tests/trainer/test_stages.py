"""Data stages: stratified nested subsets, and a real run that trains on them first."""

from __future__ import annotations

import numpy as np
import pytest

from search.config import parse_study_config
from search.study import make_pruner
from tests.trainer.runs import small_config
from trainer.config import TrainSettings
from trainer.data import load_splits
from trainer.stages import StagedSampler, StagePlan, stratified_order
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


def test_segments_are_whole_steps_and_evaluations_fall_at_their_ends() -> None:
    plan = StagePlan.make(np.arange(300)[::-1], [0.25, 0.5], epochs=2, batch=32, evals_per_epoch=1)
    assert [len(s) for s in plan.segments] == [75, 150, 300, 300]
    assert set(plan.segments[0]) < set(plan.segments[1])  # nested: prefixes of one order
    # 75 rows fill 3 steps, 150 fill 5, an epoch 10: 3, 8, 18, 28.
    assert plan.schedule() == {3: 0.25, 8: 0.5, 18: 1.0, 28: 2.0}
    assert plan.total_rows == 28 * 32


def test_every_evaluation_gets_its_own_step_and_the_last_ends_the_run() -> None:
    # 10 evaluations an epoch of 300 rows in steps of 64 (e.g. 32 x 2 accumulated): 5 steps.
    plan = StagePlan.make(np.arange(300), [0.25, 0.5], epochs=3, batch=64, evals_per_epoch=10)
    points = plan.eval_points()
    assert len(points) == 2 + 3 * 5 and len(set(points)) == len(points)
    assert points[-1] == plan.total_rows // 64
    stream = list(StagedSampler(plan, lengths=None))  # plain shuffles: no length grouping
    assert len(stream) == plan.total_rows and set(stream[:128]) == set(plan.segments[0])


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
    quarter, half, epochs = stream[:96], stream[96:256], (stream[256:576], stream[576:])
    # One pass over the quarter (its last step filled up from the quarter), then the half.
    assert set(quarter) == set(plan.segments[0]) and len(plan.segments[0]) == 75
    assert set(half) == set(plan.segments[1]) > set(quarter)
    assert set(epochs[0]) == set(epochs[1]) == set(range(300))  # then whole epochs
    shares = np.bincount(splits.train_labels[plan.segments[0]], minlength=4) / 75
    assert np.abs(shares - splits.label_distribution("train")).max() < 0.02  # stratified

    result = train_model(cfg)
    assert [r.step for r in result.history] == [3, 8, 18, 28]  # after each stage, each epoch
    assert [r.epoch for r in result.history] == [0.25, 0.5, 1.0, 2.0]
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
