"""Word-piece vectors learnt from the corpus, to start a backbone's embeddings from.

A randomly initialised small BERT fine-tuned on a few thousand reviews learns little in
two epochs: each word piece is seen a handful of times. Vectors from the whole unlabelled
corpus (every training review, not only the labelled slice) give each piece a meaning
before fine-tuning starts, in about a minute of CPU: the truncated SVD of the positive
pointwise mutual information of word pieces within a window (Levy, Goldberg & Dagan,
2015: context counts smoothed by the power 0.75, co-occurrences weighted 1/distance).
The README's recipe table has what it gave against random embeddings and MLM.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from transformers import PreTrainedTokenizerFast

from trainer.backbone.progress import QUIET, Phase

WINDOW = 5  # word pieces on each side
CONTEXT_POWER = 0.75  # smooths the context distribution: rare contexts stop dominating PMI
SVD_ITERATIONS = 5  # power iterations of the randomized SVD
OVERSAMPLE = 10  # extra random directions, so the top ``dim`` are captured accurately
# The steps progress counts: encoding, one per distance, PMI, then the SVD's products.
STEPS = 1 + WINDOW + 1 + (1 + SVD_ITERATIONS + 1)


def corpus_vectors(
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    dim: int,
    seed: int = 0,
    progress: Phase = QUIET,
) -> np.ndarray:
    """(vocabulary, dim) float32 vectors; rows of pieces never seen in ``texts`` are 0.
    ``progress`` counts ``STEPS`` steps (uneven, but each a sizeable part of the work)."""
    progress.restart("pair counts, PMI, SVD", STEPS, "steps")
    ids = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    progress.advance()
    counts = cooccurrences([row.ids for row in ids], len(tokenizer), progress)
    pmi = positive_pmi(counts)
    progress.advance()
    return svd_vectors(pmi, dim, seed, progress)


def cooccurrences(rows: list[list[int]], vocab: int, progress: Phase = QUIET) -> sp.csr_matrix:
    """Symmetric counts of piece pairs at most ``WINDOW`` apart in one text, 1/distance each."""
    flat = np.fromiter((i for row in rows for i in row), dtype=np.int64)
    text = np.repeat(np.arange(len(rows)), [len(row) for row in rows])
    counts = sp.csr_matrix((vocab, vocab), dtype=np.float64)
    for distance in range(1, WINDOW + 1):
        same = text[distance:] == text[:-distance]  # pairs may not cross texts
        left, right = flat[:-distance][same], flat[distance:][same]
        weight = np.full(left.shape, 1.0 / distance)
        counts += sp.csr_matrix((weight, (left, right)), shape=(vocab, vocab))
        progress.advance()
    return counts + counts.T


def positive_pmi(counts: sp.csr_matrix) -> sp.csr_matrix:
    """max(0, log p(w, c) / (p(w) p_0.75(c))) on the non-zero counts."""
    total = counts.sum()
    words = np.asarray(counts.sum(axis=1)).ravel() / total
    contexts = np.asarray(counts.sum(axis=0)).ravel() ** CONTEXT_POWER
    contexts /= contexts.sum()
    coo = counts.tocoo()
    pmi = np.log(coo.data / total) - np.log(words[coo.row]) - np.log(contexts[coo.col])
    keep = pmi > 0
    pmi = pmi[keep].astype(np.float32)  # halves the SVD's memory traffic
    return sp.csr_matrix((pmi, (coo.row[keep], coo.col[keep])), shape=counts.shape)


def svd_vectors(matrix: sp.csr_matrix, dim: int, seed: int, progress: Phase = QUIET) -> np.ndarray:
    """U * sqrt(S) of a rank-``dim`` SVD (the symmetric split of the singular values, which
    Levy et al. found better than U * S for similarity).

    A randomized SVD (Halko, Martinsson & Tropp, 2011) with scipy's sparse products: torch's
    ``svd_lowrank`` on a sparse tensor took 170 s where this took 36 s in float32 (48,000 pieces,
    23 million non-zeros), and scikit-learn's version is not worth a dependency.
    """
    rank = min(dim, min(matrix.shape) - 1)  # a tiny vocabulary has fewer directions
    rng = np.random.default_rng(seed)
    basis = _orthonormal(
        matrix @ rng.standard_normal((matrix.shape[1], rank + OVERSAMPLE), dtype=np.float32)
    )
    progress.advance()
    for _ in range(SVD_ITERATIONS):  # power iterations sharpen the spectrum's top
        basis = _orthonormal(matrix @ _orthonormal(matrix.T @ basis))
        progress.advance()
    u, s, _ = np.linalg.svd((matrix.T @ basis).T, full_matrices=False)
    progress.advance()
    vectors = ((basis @ u[:, :rank]) * np.sqrt(s[:rank])).astype(np.float32)
    # Rows without any count come out as rounding noise (~1e-17), not 0: make them exactly 0
    # so ``load_into`` knows them as unseen and leaves their random initialisation alone.
    vectors[matrix.getnnz(axis=1) == 0] = 0.0
    return np.pad(vectors, ((0, 0), (0, dim - rank)))


def _orthonormal(block: np.ndarray) -> np.ndarray:
    return np.linalg.qr(block)[0]


def load_into(embeddings: torch.nn.Embedding, vectors: np.ndarray, std: float) -> None:
    """Copy ``vectors`` (scaled to standard deviation ``std`` overall) into the rows they
    cover; pieces without a vector (special tokens, unseen pieces) keep their random init."""
    scaled = torch.from_numpy(vectors) * (std / max(float(vectors.std()), 1e-12))
    seen = scaled.abs().sum(dim=1) > 0
    width = min(scaled.shape[1], embeddings.embedding_dim)
    with torch.no_grad():
        embeddings.weight[seen, :width] = scaled[seen, :width]
