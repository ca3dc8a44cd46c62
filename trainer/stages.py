"""Data-size fidelity: a run starts with one pass over small nested subsets of its rows.

With ``train.data_stages: [0.25, 0.5]`` a run trains one pass over a stratified quarter of
the training rows, evaluates, one pass over a stratified half (which holds that quarter),
evaluates, and then trains its ``epochs`` full epochs as usual. The pruner's first
decisions thus come after a quarter and after half an epoch's compute, and a trial that
survives them goes on, with the same weights, to more rows and then to more epochs.

The subsets are prefixes of one order fixed by the data seed, not by the trial: every
trial's quarter is the same rows, so their first evaluations compare like with like, and
each subset holds the smaller ones (nested). They are index lists into the cached
encodings: nothing is tokenised again.

The whole run is one pass of the Trainer over a concatenated index stream (the stages, then
the epochs), so the learning-rate schedule spans all of it; each segment keeps the
length-grouped batches of ordinary epochs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of the rows whose every prefix keeps the class shares (within a row).

    Each row's key is its position in a seeded shuffle of its class, divided by the class
    size; sorting by the key interleaves the classes in proportion.
    """
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels), dtype=np.float64)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        keys[rng.permutation(rows)] = (np.arange(len(rows)) + 0.5) / len(rows)
    return np.argsort(keys, kind="stable")


@dataclass(frozen=True)
class StagePlan:
    """Which rows each segment of a staged run trains on, and where evaluations fall."""

    segments: list[np.ndarray]  # row indices: each stage's subset, then the full set per epoch
    batch: int  # rows per optimizer step
    evals_per_epoch: int
    n_stages: int

    @classmethod
    def make(
        cls,
        order: np.ndarray,
        stages: Sequence[float],
        epochs: int,
        batch: int,
        evals_per_epoch: int,
    ) -> StagePlan:
        n = len(order)
        # Whole optimizer steps per stage, so a stage's evaluation sees only its own rows.
        sizes = [min(n, math.ceil(f * n / batch) * batch) for f in stages]
        full = np.arange(n)
        return cls([order[:m] for m in sizes] + [full] * epochs, batch, evals_per_epoch, len(sizes))

    @property
    def total_rows(self) -> int:
        return sum(len(s) for s in self.segments)

    def schedule(self) -> dict[int, float]:
        """Optimizer step of each evaluation -> its epoch: a stage's end is its share of the
        rows (0.25); inside the full epochs, evenly per epoch and always at its end."""
        points, done, n = {}, 0, len(self.segments[-1])
        for k, segment in enumerate(self.segments):
            if k < self.n_stages:
                points[math.ceil((done + len(segment)) / self.batch)] = len(segment) / n
            else:
                # At most one evaluation per optimizer step, as ``eval_points`` caps it.
                per = min(self.evals_per_epoch, math.ceil(n / self.batch))
                epoch = k - self.n_stages
                for j in range(1, per + 1):
                    step = math.ceil((done + j * len(segment) / per) / self.batch)
                    points[step] = epoch + j / per
            done += len(segment)
        return points

    def eval_points(self) -> list[int]:
        return sorted(self.schedule())

    def epochs_at(self, step: int) -> float:
        """The epoch of the evaluation after optimizer step ``step``."""
        return self.schedule()[step]


class StagedSampler(Sampler[int]):
    """The segments of a ``StagePlan`` one after another, each shuffled (grouped by length
    when ``lengths`` is given, as the Trainer's ``LengthGroupedSampler`` groups an epoch)."""

    def __init__(self, plan: StagePlan, lengths: Sequence[int] | None, generator=None) -> None:
        self.plan, self.generator = plan, generator
        self.lengths = None if lengths is None else np.asarray(lengths)

    def __len__(self) -> int:
        return self.plan.total_rows

    def __iter__(self) -> Iterator[int]:
        for segment in self.plan.segments:
            yield from (int(segment[i]) for i in self._shuffled(segment))

    def _shuffled(self, segment: np.ndarray) -> list[int]:
        if self.lengths is None:
            return torch.randperm(len(segment), generator=self.generator).tolist()
        lengths = self.lengths[segment].tolist()
        return get_length_grouped_indices(lengths, self.plan.batch, generator=self.generator)
