"""The GPU benchmark's arithmetic (no GPU needed): peak FLOP/s by whole words of the name."""

from __future__ import annotations

import pytest

from benchmarks.gpu import peak_tflops


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),  # a substring match gave the SXM figure
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40", 181.0),  # a substring match on "L4" gave 121
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
    ],
)
def test_peak_is_matched_by_whole_words(name: str, tflops: float) -> None:
    assert peak_tflops(name, None) == tflops


def test_an_unknown_gpu_asks_for_its_peak() -> None:
    with pytest.raises(SystemExit, match="--peak-tflops"):
        peak_tflops("NVIDIA Tesla V100-SXM2-16GB", None)
    assert peak_tflops("NVIDIA Tesla V100-SXM2-16GB", 125.0) == 125.0
