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
    """Which rows each segment of a staged run trains on, and where evaluations fall.

    Every segment is whole optimizer steps: its last step is filled up with rows of the same
    segment drawn again (fewer than one batch), so an evaluation at a segment's end has seen
    that segment's rows and no other, and evaluations fall on steps as ``eval_points`` puts
    them in plain epochs.
    """

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
        subsets = [order[: max(1, round(f * n))] for f in stages]
        return cls(subsets + [np.arange(n)] * epochs, batch, evals_per_epoch, len(subsets))

    def steps(self, segment: np.ndarray) -> int:
        return math.ceil(len(segment) / self.batch)

    @property
    def total_rows(self) -> int:
        return sum(self.steps(s) for s in self.segments) * self.batch

    def schedule(self) -> dict[int, float]:
        """Optimizer step of each evaluation -> its epoch: a stage's end is its share of the
        rows (0.25); inside the full epochs, evenly per epoch and always at its end."""
        points: dict[int, float] = {}
        done, n = 0, len(self.segments[-1])
        for k, segment in enumerate(self.segments):
            steps = self.steps(segment)
            if k < self.n_stages:
                points[done + steps] = len(segment) / n
            else:
                per = min(self.evals_per_epoch, steps)  # at most one evaluation per step
                for j in range(1, per + 1):
                    points[done + math.ceil(j * steps / per)] = k - self.n_stages + j / per
            done += steps
        return points

    def eval_points(self) -> list[int]:
        return sorted(self.schedule())


class StagedSampler(Sampler[int]):
    """The segments of a ``StagePlan`` one after another, each shuffled (grouped by length
    when ``lengths`` is given, as the Trainer's ``LengthGroupedSampler`` groups an epoch)
    and filled up to whole steps."""

    def __init__(self, plan: StagePlan, lengths: Sequence[int] | None, generator=None) -> None:
        self.plan, self.generator = plan, generator
        self.lengths = None if lengths is None else np.asarray(lengths)

    def __len__(self) -> int:
        return self.plan.total_rows

    def __iter__(self) -> Iterator[int]:
        for segment in self.plan.segments:
            rows = segment[self._shuffled(segment)]
            fill = self.plan.steps(segment) * self.plan.batch - len(segment)
            extra = torch.randint(len(segment), (fill,), generator=self.generator).numpy()
            yield from (int(i) for i in np.concatenate([rows, segment[extra]]))

    def _shuffled(self, segment: np.ndarray) -> list[int]:
        if self.lengths is None:
            return torch.randperm(len(segment), generator=self.generator).tolist()
        lengths = self.lengths[segment].tolist()
        return get_length_grouped_indices(lengths, self.plan.batch, generator=self.generator)
