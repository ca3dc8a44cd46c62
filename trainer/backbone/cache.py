"""A backbone built once per settings and data: ``CACHE/<key>``, reused by every later build.

The key hashes the resolved settings, the training file's bytes and ``RECIPE``, so a
changed file, flag or recipe builds anew and nothing stale is ever reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trainer.backbone.build import build_backbone
from trainer.backbone.settings import BackboneSettings

log = logging.getLogger(__name__)

# Raise when the code changes what a given set of settings builds (e.g. the vector scale).
RECIPE = 1


def cache_key(train: Path, settings: BackboneSettings) -> str:
    fields = asdict(settings.resolved())
    # Every backbone was a BERT before --arch: leaving the default out keeps their keys, so
    # caches built then stay valid; another family hashes its name.
    if fields["arch"] == "bert":
        del fields["arch"]
    digest = hashlib.sha256(f"recipe {RECIPE}\n".encode())
    digest.update(json.dumps(fields, sort_keys=True).encode())
    with open(train, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def cached_backbone(
    train: str | Path, cache: str | Path, settings: BackboneSettings, **run_options: Any
) -> tuple[Path, bool]:
    """The cached backbone for ``train`` and ``settings``, built first if missing; returns
    (folder, whether it was built now). ``run_options`` go to ``build_backbone`` (``resume``
    continues an interrupted build of the same key: its checkpoint lies beside the entry)."""
    train = Path(train)
    entry = Path(cache) / cache_key(train, settings)
    if (entry / "backbone.json").is_file():
        log.info("backbone cache hit: %s", entry)
        return entry, False
    try:
        build_backbone(train, entry, settings, **run_options)
    except OSError:
        # Another build of the same key may have published first (its rename wins): use it.
        if not (entry / "backbone.json").is_file():
            raise
        return entry, False
    return entry, True
