"""Corpus vectors: counts, PMI and SVD on generated corpora, and their copy into a BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.backbone.vectors import cooccurrences, load_into, positive_pmi, svd_vectors


def test_cooccurrences_weigh_by_distance_and_never_cross_texts() -> None:
    counts = cooccurrences([[1, 2, 3], [4]], vocab=5).toarray()
    assert counts[1, 2] == counts[2, 1] == 1.0  # neighbours
    assert counts[1, 3] == counts[3, 1] == 0.5  # two apart
    assert counts[3, 4] == 0.0  # 3 ends one text, 4 starts the next
    assert counts[4].sum() == 0.0


def synonyms_corpus(seed: int = 0) -> list[list[int]]:
    """Pieces 1 and 2 share their contexts (10-19), piece 3 has others (20-29)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(3000):
        piece = int(rng.integers(1, 4))
        context = range(10, 20) if piece < 3 else range(20, 30)
        left, right = rng.choice(list(context), size=2)
        rows.append([int(left), piece, int(right)])
    return rows


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_pieces_in_the_same_contexts_get_close_vectors() -> None:
    vectors = svd_vectors(positive_pmi(cooccurrences(synonyms_corpus(), vocab=30)), 8, seed=0)
    assert vectors.shape == (30, 8) and vectors.dtype == np.float32
    assert cosine(vectors[1], vectors[2]) > 0.9
    assert cosine(vectors[1], vectors[3]) < 0.3
    assert not vectors[0].any()  # piece 0 never occurs: no vector


def test_a_vocabulary_smaller_than_dim_pads_with_zero_columns() -> None:
    vectors = svd_vectors(positive_pmi(cooccurrences(synonyms_corpus(), vocab=30)), 64, seed=0)
    assert vectors.shape == (30, 64)
    assert not vectors[:, 29:].any()


def test_load_into_scales_seen_rows_and_keeps_the_rest() -> None:
    torch.manual_seed(0)
    embeddings = torch.nn.Embedding(6, 4)
    before = embeddings.weight.detach().clone()
    vectors = np.zeros((6, 4), dtype=np.float32)
    vectors[2:5] = np.random.default_rng(0).standard_normal((3, 4))
    load_into(embeddings, vectors, std=0.1)
    after = embeddings.weight.detach()
    torch.testing.assert_close(after[[0, 1, 5]], before[[0, 1, 5]], rtol=0, atol=0)
    scale = 0.1 / vectors.std()
    torch.testing.assert_close(after[2:5], torch.from_numpy(vectors[2:5]) * scale)


@pytest.mark.slow
def test_a_corpus_backbone_starts_from_the_vectors(nsmc_csv, tmp_path) -> None:
    from safetensors.torch import load_file

    from trainer.backbone import build_backbone

    kw = {"vocab_size": 1000, "layers": 1, "hidden": 32, "heads": 2, "max_length": 32}
    random = build_backbone(nsmc_csv(1500), tmp_path / "random", **kw)
    corpus = build_backbone(nsmc_csv(1500), tmp_path / "corpus", embedding_init="corpus", **kw)
    name = "bert.embeddings.word_embeddings.weight"
    rows = {p: load_file(p / "model.safetensors")[name] for p in (random, corpus)}
    changed = (rows[random] != rows[corpus]).any(dim=1)
    assert changed.float().mean() > 0.5  # most pieces occur in the texts and got a vector
    assert rows[corpus][changed].std() == pytest.approx(0.1, rel=0.2)
