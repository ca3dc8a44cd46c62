"""A cased BERT WordPiece tokenizer learnt from the corpus itself, deterministic and Hangul-safe.

Used by the offline backbone builder (``trainer.backbone``); the result loads with
``AutoTokenizer`` and needs no Hub access.
"""

from __future__ import annotations

from collections import Counter

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerFast

from trainer.backbone.progress import QUIET, Phase

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]"}
SPECIAL_TOKENS |= {"sep_token": "[SEP]", "mask_token": "[MASK]"}
MIN_VOCAB = 256
WORD_START = "\ue000"  # private-use character: marks word starts while learning merges


def train_tokenizer(
    texts: list[str],
    vocab_size: int,
    max_length: int,
    *,
    segments: bool = True,
    progress: Phase = QUIET,
) -> PreTrainedTokenizerFast:
    """A cased BERT WordPiece tokenizer trained on ``texts``; keeps Hangul intact.

    ``segments`` False (RoBERTa): pairs are joined by two [SEP] and no token_type_ids are
    made, as RoBERTa's embeddings have no segment table to look them up in."""
    # NFC keeps Hangul syllables composed; NFKC would turn compatibility jamo (the ㅋㅋ and
    # ㅠㅠ of Korean reviews) into conjoining jamo, and accent stripping decomposes
    # syllables into jamo (NFD): both make decoded text unreadable.
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.BertNormalizer(strip_accents=False, lowercase=False)]
    )
    splitter = pre_tokenizers.BertPreTokenizer()  # whitespace + punctuation
    progress.restart("splitting words", len(texts), "texts")
    words = [
        [w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(t))]
        for t in progress.count(texts)
    ]
    vocab = {token: i for i, token in enumerate(learn_wordpieces(words, vocab_size, progress))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, splitter, decoders.WordPiece()
    tok.post_processor = _template(vocab, segments)
    inputs = ["input_ids", "token_type_ids", "attention_mask"]
    # The generic class, not BertTokenizer: in transformers 5 BertTokenizer rebuilds its
    # own normaliser on load (lowercase + accent stripping) and would ignore ours.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        # What the tokenizer returns by default: without token_type_ids for RoBERTa.
        model_input_names=inputs if segments else [n for n in inputs if n != "token_type_ids"],
        **SPECIAL_TOKENS,
    )


def _template(vocab: dict[str, int], segments: bool) -> processors.TemplateProcessing:
    """[CLS] A [SEP], and for pairs BERT's [CLS] A [SEP] B:1 [SEP]:1 (segment ids 0, 1) or
    RoBERTa's [CLS] A [SEP] [SEP] B [SEP] (all 0: its single token type)."""
    cls, sep = SPECIAL_TOKENS["cls_token"], SPECIAL_TOKENS["sep_token"]
    pair = f"{cls} $A {sep} $B:1 {sep}:1" if segments else f"{cls} $A {sep} {sep} $B {sep}"
    return processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=pair,
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )


def learn_wordpieces(words: list[list[str]], vocab_size: int, progress: Phase = QUIET) -> list[str]:
    """A WordPiece vocabulary learnt by BPE merges; the same words always give the same list.

    tokenizers' WordPieceTrainer numbers its ``##`` pieces in hash-map order, so merges of
    equal count tie-break differently on every run (huggingface/tokenizers#1794). A BPE
    without a continuation prefix numbers everything in sorted order: learn on words that
    carry a word-start mark instead, then map marked pieces to words, the rest to ``##``.
    """
    # Korean has thousands of syllables; without a cap the alphabet alone (x and ##x) can
    # exceed vocab_size and leave no room for whole words. Half keeps UNK rare (~1%).
    # Capped here, not by the trainer, whose cut breaks count ties at random.
    counts = Counter("".join(w for row in words for w in row))
    alphabet = sorted(counts, key=lambda c: (-counts[c], c))[: vocab_size // 2]
    trainer = BpeTrainer(
        vocab_size=2 * vocab_size,  # marked single characters and duplicates are dropped below
        initial_alphabet=[WORD_START, *alphabet],
        limit_alphabet=len(alphabet) + 1,
        show_progress=False,
    )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    marked = (" ".join(WORD_START + w for w in row) for row in words)
    # The trainer reports nothing while it merges (native code): the step shows time only.
    progress.restart("learning merges")
    bpe.train_from_iterator(marked, trainer, length=len(words))
    starts = set(alphabet) & {w[0] for row in words for w in row}
    inside = set(alphabet) & {c for row in words for w in row for c in w[1:]}
    vocab = dict.fromkeys([*SPECIAL_TOKENS.values(), *sorted(starts)])
    vocab |= dict.fromkeys(f"##{c}" for c in sorted(inside))
    for piece in sorted(bpe.get_vocab(), key=bpe.token_to_id):
        if len(vocab) >= vocab_size:
            break
        if len(piece) > 1:  # single characters are in already
            vocab.setdefault(piece[1:] if piece.startswith(WORD_START) else f"##{piece}")
    return list(vocab)


def unk_rate(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> float:
    """Share of [UNK] among the word pieces of ``texts``."""
    ids = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    unk = sum(row.count(tokenizer.unk_token_id) for row in ids)
    return unk / max(sum(map(len, ids)), 1)
