"""The GPU tests (``make gpu-check``; ``make test`` deselects them by their ``gpu`` marker).

One GPU is pinned before anything in the process starts CUDA, as a worker does; without a
CUDA device every test here is skipped, before any backbone is built. What the tests
measure is written to ``$FOCALTUNE_GPU_CHECK_OUT/gpu-tests.json`` (also when one fails),
so a remote run brings the figures back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

NO_CUDA = (
    "no CUDA device visible (torch.cuda.is_available() is False): the GPU tests run on a "
    "machine with an NVIDIA GPU and a CUDA build of torch (make gpu-check)"
)


def tf32_matmul() -> bool:
    """Whether float32 matmuls may run in TF32 now. torch >= 2.9 has ``fp32_precision``
    (which transformers sets); reading the legacy ``allow_tf32`` after it raises."""
    import torch

    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision == "tf32"
    return bool(matmul.allow_tf32)


def tf32_state() -> dict[str, Any]:
    """The TF32 settings as the figures record them (strings; never raises)."""
    import torch

    state: dict[str, Any] = {}
    for name, read in (
        ("fp32_precision", lambda: torch.backends.fp32_precision),
        ("matmul.fp32_precision", lambda: torch.backends.cuda.matmul.fp32_precision),
        ("matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
    ):
        try:
            state[name] = read()
        except Exception as err:  # a mixed legacy/new API state raises on reading
            state[name] = f"{type(err).__name__}: {str(err)[:120]}"
    return state


@pytest.fixture(scope="session", autouse=True)
def cuda_device() -> dict[str, Any]:
    """Pin one GPU (before CUDA starts), then skip every test here when there is none."""
    from trainer.devices import pin_one_gpu

    pin_one_gpu()  # counts GPUs through NVML: CUDA is not started yet
    import torch

    if not torch.cuda.is_available():
        pytest.skip(NO_CUDA)
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "bf16_in_hardware": torch.cuda.is_bf16_supported(including_emulation=False),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


@pytest.fixture(scope="session")
def figures(cuda_device: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Each test's measurements by test name; written out at the end of the session."""
    found: dict[str, Any] = {"device": cuda_device}
    yield found
    out = os.environ.get("FOCALTUNE_GPU_CHECK_OUT")
    if out:
        path = Path(out) / "gpu-tests.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(found, indent=2, default=str) + "\n", encoding="utf-8")
