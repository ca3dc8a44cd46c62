"""`focaltune backbone build`: an offline backbone (WordPiece tokenizer trained on the corpus,
a small BERT, optional masked-language-model pretraining). Only that command uses this
package; what a trial needs of a backbone is in ``trainer/loading.py``.
"""

from __future__ import annotations

from trainer.backbone.build import build_backbone
from trainer.backbone.cache import cached_backbone
from trainer.backbone.settings import PRESETS, BackboneSettings

__all__ = ["PRESETS", "BackboneSettings", "build_backbone", "cached_backbone"]
