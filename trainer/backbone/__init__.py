"""`focaltune backbone build`: an offline backbone (WordPiece tokenizer trained on the corpus,
a small BERT, optional masked-language-model pretraining). Only that command uses this
package; what a trial needs of a backbone is in ``trainer/loading.py``.
"""

from __future__ import annotations

from trainer.backbone.build import BackboneSettings, build_backbone

__all__ = ["BackboneSettings", "build_backbone"]
