"""What shapes an offline backbone: ``BackboneSettings`` (each field a `backbone build` flag),
its checks, and the named ``PRESETS``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from trainer.backbone.arch import ARCHS
from trainer.backbone.wordpiece import MIN_VOCAB
from trainer.errors import BadInput

# Upper limits of the settings: far beyond any useful offline backbone, below what crashes.
MAX_SIZES = {
    "vocab_size": 1_000_000,
    "layers": 96,
    "hidden": 16_384,
    "heads": 256,
    "intermediate": 65_536,
    "max_length": 8192,  # DataConfig.max_length's limit
    "mlm_batch_size": 65_536,
}
MAX_PARAMETERS = 2_000_000_000
EMBEDDING_INITS = ("random", "corpus")
MAX_MLM_EPOCHS = 1000


def _setting(default: Any, text: str, choices: tuple[str, ...] | None = None) -> Any:
    """A field whose ``text`` becomes its ``focaltune backbone build`` flag's help (and
    ``choices`` the flag's only accepted values)."""
    return field(default=default, metadata={"help": text, "choices": choices})


@dataclass(frozen=True)
class BackboneSettings:
    """Everything that shapes a backbone; written to ``backbone.json``.

    The one list of the settings: each field is a ``focaltune backbone build`` flag
    (``--vocab-size`` for ``vocab_size``) with this default and its metadata's help.
    """

    text_column: str = _setting("review", "column holding the texts")
    arch: str = _setting(
        "bert",
        "encoder family: bert, or roberta (no token_type_ids, RoBERTa's position ids and "
        "classification head)",
        tuple(ARCHS),
    )
    vocab_size: int = _setting(8000, "WordPiece vocabulary size (>= 256)")
    layers: int = _setting(2, "transformer layers")
    hidden: int = _setting(128, "hidden size; a multiple of --heads")
    heads: int = _setting(2, "attention heads")
    intermediate: int | None = _setting(None, "feed-forward size (default: 4 x hidden)")
    max_length: int = _setting(128, "tokenizer model_max_length and MLM truncation, in tokens")
    max_samples: int | None = _setting(
        None, "use a seeded random sample of this many texts (default: all)"
    )
    embedding_init: str = _setting(
        "random", "word-piece embeddings: random, or corpus (vectors learnt from the texts)"
    )
    mlm_epochs: float = _setting(0, "masked-LM pretraining epochs on the texts (0 = none)")
    mlm_batch_size: int = _setting(64, "masked-LM batch size")
    mlm_learning_rate: float = _setting(5e-4, "masked-LM peak learning rate")
    time_budget: float | None = _setting(
        None,
        "minutes masked-LM pretraining may run: it then stops and the backbone keeps what it "
        "learnt; the learning-rate decay is re-planned to end there (default: no limit)",
    )
    seed: int = _setting(0, "seed of sampling, initialisation and masking")

    def resolved(self) -> BackboneSettings:
        """With ``intermediate`` filled in: unset (None or 0) is 4 x hidden, BERT's ratio.

        Resolved only when building, so ``replace(settings, hidden=...)`` still follows."""
        return replace(self, intermediate=self.intermediate or 4 * self.hidden)

    def check(self) -> None:
        """Collect every bad setting and raise one ``BadInput`` naming them all (resolved
        settings: ``intermediate`` set)."""
        problems = [
            f"{name}={getattr(self, name)} must be >= {low}"
            for name, low in (("layers", 1), ("heads", 1), ("max_length", 8), ("mlm_batch_size", 1))
            if getattr(self, name) < low
        ]
        if self.vocab_size < MIN_VOCAB:
            problems.append(
                f"vocab_size={self.vocab_size} is too small: needs >= {MIN_VOCAB} for the "
                "special tokens and the corpus's characters (8000 is a good start)"
            )
        if self.heads >= 1 and (self.hidden < 1 or self.hidden % self.heads):
            problems.append(
                f"hidden={self.hidden} must be a positive multiple of heads={self.heads}"
            )
        if self.intermediate < 1:
            problems.append(f"intermediate={self.intermediate} must be >= 1 (default 4 * hidden)")
        if self.arch not in ARCHS:
            problems.append(f"arch={self.arch!r} must be one of " + ", ".join(ARCHS))
        if self.embedding_init not in EMBEDDING_INITS:
            problems.append(
                f"embedding_init={self.embedding_init!r} must be one of "
                + ", ".join(EMBEDDING_INITS)
            )
        if self.max_samples is not None and self.max_samples < 1:
            problems.append(f"max_samples={self.max_samples} must be >= 1 or None (all texts)")
        if not (math.isfinite(self.mlm_epochs) and 0 <= self.mlm_epochs <= MAX_MLM_EPOCHS):
            problems.append(f"mlm_epochs={self.mlm_epochs} must be a number in 0..{MAX_MLM_EPOCHS}")
        if not (math.isfinite(self.mlm_learning_rate) and 0 < self.mlm_learning_rate < 1):
            problems.append(f"mlm_learning_rate={self.mlm_learning_rate} must be in (0, 1)")
        problems += self._budget_problems()
        problems += self._too_big()
        if problems:
            raise BadInput("backbone settings: " + "; ".join(problems))

    def _budget_problems(self) -> list[str]:
        if self.time_budget is None:
            return []
        if not (math.isfinite(self.time_budget) and self.time_budget > 0):
            return [f"time_budget={self.time_budget} must be a positive number of minutes"]
        if self.mlm_epochs == 0:
            return [
                f"time_budget={self.time_budget} limits masked-LM pretraining, which is off "
                "(mlm_epochs=0); set --mlm-epochs or drop --time-budget"
            ]
        return []

    def _too_big(self) -> list[str]:
        """Sizes past these abort in native code or exhaust memory long before a result."""
        problems = [
            f"{name}={getattr(self, name)} must be <= {high}"
            for name, high in MAX_SIZES.items()
            if getattr(self, name) > high
        ]
        params = self.vocab_size * self.hidden + self.layers * (
            4 * self.hidden**2 + 2 * self.hidden * self.intermediate
        )
        if not problems and params > MAX_PARAMETERS:
            problems.append(
                f"the model would have ~{params:,} parameters (> {MAX_PARAMETERS:,}); "
                "lower vocab_size, layers, hidden or intermediate"
            )
        return problems


# Named starting points for `backbone build --preset`; explicit flags override them.
PRESETS = {
    "standard": BackboneSettings(
        # README, "Backbone recipe": the best measured recipe that builds in minutes on a
        # CPU. A large vocabulary keeps most Korean words whole, and corpus vectors give
        # each of them a meaning before fine-tuning; MLM on top gained nothing measurable.
        vocab_size=48_000,
        layers=2,
        hidden=128,
        heads=2,
        max_length=128,
        embedding_init="corpus",
    ),
    "tiny": BackboneSettings(  # random and small: for tests and smoke runs, learns little
        vocab_size=8000, layers=2, hidden=128, heads=2, max_length=64, max_samples=20_000
    ),
}
