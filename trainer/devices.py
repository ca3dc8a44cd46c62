"""Which GPU a process uses, and in which precision it trains and infers.

One worker is one process on one GPU. With several GPUs visible the Trainer would wrap
the model in ``nn.DataParallel``: the focal loss then receives per-device counts, autocast
is skipped and evaluation points move, so a process that trains pins itself to the first
visible GPU before CUDA starts. ``launch`` hands each worker one of its own entries.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from contextlib import contextmanager
from typing import Literal

import torch

log = logging.getLogger(__name__)

VISIBLE = "CUDA_VISIBLE_DEVICES"
Precision = Literal["bf16", "fp16", "fp32"]


def visible_gpus(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES entries (indices, UUIDs or MIG names).

    Counting through ``torch.cuda.device_count`` does not start CUDA (it asks NVML), so
    CUDA_VISIBLE_DEVICES can still be narrowed afterwards.
    """
    environ = os.environ if environ is None else environ
    count = torch.cuda.device_count()
    listed = environ.get(VISIBLE)
    if listed is None:
        return [str(i) for i in range(count)]
    # CUDA stops at the first entry it cannot use; the count says how many it accepted.
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]


def pin_one_gpu(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Narrow CUDA_VISIBLE_DEVICES to the first visible GPU; return it (None: no GPU).

    Must run before anything initialises CUDA (``torch.cuda.is_available`` does).
    """
    environ = os.environ if environ is None else environ
    gpus = visible_gpus(environ)
    if len(gpus) > 1:
        log.warning(
            f"{len(gpus)} GPUs visible to one process; using only {gpus[0]}. Start one worker "
            f"per GPU (focaltune launch --workers {len(gpus)}, or {VISIBLE}=N per worker)"
        )
        environ[VISIBLE] = gpus[0]
    return gpus[0] if gpus else None


def describe_device(device: torch.device) -> str:
    """``cuda:0`` alone does not say which card: add the physical entry and its name."""
    if device.type != "cuda":
        return str(device)
    entry = os.environ.get(VISIBLE, str(device.index or 0)).split(",")[0]
    return f"{device} ({VISIBLE}={entry}, {torch.cuda.get_device_name(device)})"


def training_precision(setting: str) -> Precision:
    """The mixed precision for training. ``auto``: bf16 where the GPU has it in hardware
    (Ampere and later), fp16 with loss scaling on older GPUs (V100, T4), fp32 on CPU."""
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if not torch.cuda.is_available():
        return "fp32"
    # Without including_emulation=False, V100 and T4 report bf16 they only emulate (slowly).
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


@contextmanager
def inference_precision(precision: Precision, device: torch.device):
    """Run a forward pass in exactly one precision, whatever global flags say.

    ``final`` measures and ``predict`` serves under this same context, so the figures in
    the report are those of the served bundle. fp32 is strict (no TF32 matmuls, which the
    Trainer switches on globally for training on Ampere and later).
    """
    with strict_fp32_matmuls():
        if precision == "fp32":
            yield
        else:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


@contextmanager
def strict_fp32_matmuls():
    """fp32 matmuls in IEEE precision (no TF32) inside, the caller's setting after."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        # torch >= 2.9: the Trainer's tf32=True sets this newer flag, and once it is set,
        # reading the legacy allow_tf32 raises ("mix of the legacy and new APIs").
        saved, matmul.fp32_precision = matmul.fp32_precision, "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = saved
        return
    saved, matmul.allow_tf32 = matmul.allow_tf32, False
    try:
        yield
    finally:
        matmul.allow_tf32 = saved
