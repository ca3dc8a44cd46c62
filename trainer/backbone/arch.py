"""The encoder families `backbone build --arch` offers, and what differs between them.

Everything else in the builder is family-neutral: it reaches the encoder through
``model.base_model``, the word embeddings through ``get_input_embeddings()`` and the
masked-LM head through ``mlm_head``, so a family is one entry in ``ARCHS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)

# Room for longer inputs later (fine-tuning may use a larger max_length than the build).
MIN_POSITIONS = 512


@dataclass(frozen=True)
class Arch:
    config: type[PretrainedConfig]
    masked_lm: type[PreTrainedModel]
    head: str  # the masked-LM model's attribute that maps hidden states to vocabulary logits
    segments: bool  # token_type_ids: BERT's sentence A/B embedding; RoBERTa dropped it
    # Position slots before the first token: RoBERTa numbers positions from pad_token_id + 1.
    # 2 as in trainer/loading.py's POSITION_OFFSET, which `study create` checks lengths with.
    position_offset: int
    extra: tuple[tuple[str, Any], ...] = ()  # further config fields, fixed for the family


ARCHS = {
    "bert": Arch(BertConfig, BertForMaskedLM, head="cls", segments=True, position_offset=0),
    "roberta": Arch(
        RobertaConfig,
        RobertaForMaskedLM,
        head="lm_head",
        segments=False,
        position_offset=2,
        # RobertaConfig defaults to 2 token types although RoBERTa has one; with 1 the
        # unused second row is not saved (and not mistaken for something trained).
        extra=(("type_vocab_size", 1),),
    ),
}


def arch_of(model: PreTrainedModel) -> Arch:
    return ARCHS[model.config.model_type]


def make_config(arch: str, tokenizer: PreTrainedTokenizerFast, **sizes: Any) -> PretrainedConfig:
    """The ``arch`` config for ``tokenizer``'s vocabulary and special tokens; ``sizes`` are
    hidden_size, num_hidden_layers, ..., ``max_length`` the longest input the build uses."""
    family = ARCHS[arch]
    max_length = sizes.pop("max_length")
    fields = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=max(MIN_POSITIONS, max_length) + family.position_offset,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )
    if arch != "bert":  # BERT's config stays as before --arch existed (bos/eos unset)
        # RobertaConfig's defaults (bos 0, pad 1, eos 2) are fairseq's ids, not this vocabulary's.
        fields |= {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id}
    return family.config(**fields, **dict(family.extra))


def mlm_head(model: PreTrainedModel) -> nn.Module:
    """The module that maps the encoder's hidden states (any leading shape) to vocabulary
    logits: BERT's ``cls``, RoBERTa's ``lm_head``."""
    return getattr(model, arch_of(model).head)
