"""Stochastic weight averaging of the last K epoch weights, kept in memory.

A TrainerCallback (written elsewhere) calls ``LastK.add(model)`` at each epoch end; after
training, ``LastK.average()`` gives the SWA state dict to load back with
``model.load_state_dict(avg, strict=True)``. This module knows nothing of the Trainer.

No batch-norm statistics update follows the averaging: transformer encoders (BERT, RoBERTa)
use LayerNorm, whose statistics are computed per example, so averaged weights need no
recalibration pass. Nothing here depends on the architecture: every state-dict entry is
averaged by its name, whatever prefix (``bert.``, ``roberta.``) the family gives it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

# Identifies the memory a tensor views; two state-dict entries with the same key are tied.
_AliasKey = tuple[str, int, int, tuple[int, ...], tuple[int, ...], torch.dtype]


def _alias_key(tensor: Tensor) -> _AliasKey:
    return (
        str(tensor.device),
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
    )


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Return a detached CPU copy of ``model.state_dict()``.

    Entries that share memory in the model (tied weights, e.g. a masked-LM decoder and the
    word embeddings, which both appear in the state dict) share one copy in the snapshot,
    so keeping K snapshots costs K copies of the weights, not more.
    """
    copies: dict[_AliasKey, Tensor] = {}
    state: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = _alias_key(tensor)
        if key not in copies:
            copies[key] = tensor.detach().to("cpu", copy=True)
        state[name] = copies[key]
    return state


def _check_compatible(states: Sequence[Mapping[str, Tensor]]) -> None:
    if not states:
        raise ValueError("average_state_dicts: got no state dicts; pass at least one")
    names = set(states[0])
    for index, state in enumerate(states[1:], start=1):
        if set(state) != names:
            key = sorted(names ^ set(state))[0]
            has, lacks = (0, index) if key in names else (index, 0)
            raise ValueError(
                f"average_state_dicts: key {key!r} is in state dict {has} but not in {lacks}; "
                f"average snapshots of the same model architecture"
            )
        for name in states[0]:
            a, b = states[0][name], state[name]
            if a.shape != b.shape or a.dtype != b.dtype:
                raise ValueError(
                    f"average_state_dicts: key {name!r} is {tuple(a.shape)} {a.dtype} in state "
                    f"dict 0 but {tuple(b.shape)} {b.dtype} in {index}; average snapshots of "
                    f"the same model with the same dtype"
                )


def _mean(tensors: Sequence[Tensor]) -> Tensor:
    # Accumulate in float64, at least float32 as SWA needs: summing K bf16/fp16 tensors in
    # their own dtype loses the small epoch-to-epoch differences that SWA is meant to average,
    # and float64 (unlike float32) makes the mean of K identical float32 tensors exactly that
    # tensor. Only one tensor's accumulator is alive at a time, so the cost is small.
    total = torch.zeros(tensors[0].shape, dtype=torch.float64, device=tensors[0].device)
    for tensor in tensors:
        total += tensor.to(device=total.device, dtype=torch.float64)
    return (total / len(tensors)).to(tensors[0].dtype)


def average_state_dicts(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Element-wise mean of state dicts with identical keys, shapes and dtypes.

    Floating tensors are averaged with float64 accumulation and cast back to their dtype.
    Integer and bool buffers (position ids, counters such as ``num_batches_tracked``) are
    taken unchanged from the *last* state dict: they are not weights, a mean of indices is
    meaningless, and counters legitimately differ between epochs, so no equality is
    enforced. Entries tied in every input stay tied (one shared tensor) in the output.
    Raises ``ValueError`` on an empty sequence or on a key/shape/dtype mismatch.
    """
    _check_compatible(states)
    last = states[-1]
    done: dict[tuple[_AliasKey, ...], Tensor] = {}
    result: dict[str, Tensor] = {}
    for name in last:
        group = tuple(_alias_key(state[name]) for state in states)
        if group not in done:
            tensors = [state[name] for state in states]
            floating = tensors[0].is_floating_point()
            done[group] = _mean(tensors) if floating else last[name].clone()
        result[name] = done[group]
    return result


class LastK:
    """The last ``k`` snapshots of a model (a bounded deque), with the epoch of each."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"LastK: k={k} must be at least 1 (the number of epochs to average)")
        self.k = k
        self._states: deque[dict[str, Tensor]] = deque(maxlen=k)
        self._epochs: deque[float | None] = deque(maxlen=k)

    def add(self, model: nn.Module, epoch: float | None = None) -> None:
        """Snapshot ``model`` now; the oldest snapshot drops out once ``k`` are held."""
        self._states.append(snapshot(model))
        self._epochs.append(epoch)

    def __len__(self) -> int:
        return len(self._states)

    @property
    def states(self) -> list[dict[str, Tensor]]:
        """The held snapshots, oldest first."""
        return list(self._states)

    @property
    def epochs(self) -> list[float | None]:
        """The epoch recorded with each held snapshot, oldest first."""
        return list(self._epochs)

    def average(self) -> dict[str, Tensor]:
        """SWA weights: the mean of the held snapshots (ValueError when none are held)."""
        if not self._states:
            raise ValueError("LastK.average: no snapshots held; call add(model) at epoch ends")
        return average_state_dicts(self.states)
