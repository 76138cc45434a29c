"""Embeddings: normalised, deterministic, cached by text, offline from the PyPI wheel."""

from __future__ import annotations

import numpy as np

from fusionlog.embedding import Embedder, preprocess


def test_preprocess_keeps_words_only():
    t = "BLOCK* NameSystem.addStoredBlock: blockMap updated: <:IP:> is added to <:BLK:> size <*>"
    assert preprocess(t) == "block name system add stored block block map updated is added to size"
    assert preprocess("<*> <:NUM:>") == "empty"
    assert preprocess("read_timeout_ms exceeded") == "read timeout ms exceeded"


def test_vectors_normalised_and_identical_for_identical_text(embedder):
    v = embedder.encode(["Receiving block <:BLK:>", "Receiving block <*>", "kernel panic on node"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v[0], v[1])  # same words after preprocessing
    assert float(v[0] @ v[2]) < 0.9




def test_disk_cache_means_no_second_computation(embedder, cache_root):
    texts = ["disk quota exceeded for volume", "connection reset by peer"]
    first = embedder.encode(texts)
    again = Embedder(cache_path=embedder.cache_path)  # a new process would look like this
    second = again.encode(texts)
    assert again.computed == 0 and again._model is None  # served from SQLite, model never loaded
    np.testing.assert_array_equal(first, second)


def test_related_templates_are_closer_than_unrelated(embedder):
    texts = ["Exception in receiveBlock for block", "Got exception while serving block", "Claim successful"]
    v = embedder.encode(texts)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])
