"""Prepared-data cache: instant second run, invalidated by a changed setting, never half-written."""

from __future__ import annotations

import numpy as np
import pytest

from fusionlog.config import ParseConfig, SessionRule
from fusionlog.prepare import prepare


def test_second_run_is_cached_and_identical(tmp_path, embedder, data_dir):
    a = prepare("bgl", data_dir, embedder=embedder, root=tmp_path, progress=False)
    b = prepare("bgl", data_dir, embedder=embedder, root=tmp_path, progress=False)
    assert not a.from_cache and b.from_cache and a.path == b.path
    assert [s.event_ids for s in a.dataset.sessions] == [s.event_ids for s in b.dataset.sessions]
    assert [s.label for s in b.dataset.sessions] == [s.label for s in a.dataset.sessions]
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert b.dataset.store is not None and b.dataset.store.templates == a.dataset.templates
    assert a.vectors.shape == (len(a.dataset.templates), 384)


def test_changed_setting_invalidates(tmp_path, embedder, data_dir):
    a = prepare("bgl", data_dir, embedder=embedder, root=tmp_path, progress=False)
    b = prepare("bgl", data_dir, rule=SessionRule("lines", window=100), embedder=embedder, root=tmp_path,
                progress=False)
    c = prepare("bgl", data_dir, parse=ParseConfig(sim_th=0.7), embedder=embedder, root=tmp_path, progress=False)
    assert len({a.path, b.path, c.path}) == 3
    assert not b.from_cache and len(b.dataset.sessions) == 20


def test_interrupted_prepare_leaves_nothing(tmp_path, embedder, data_dir, monkeypatch):
    import fusionlog.prepare as prep

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "atomic_save_npy", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare("hadoop", data_dir, embedder=embedder, root=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # no folder, not even a temp one
    monkeypatch.undo()
    ok = prepare("hadoop", data_dir, embedder=embedder, root=tmp_path, progress=False)
    assert not ok.from_cache and len(ok.dataset.sessions) == 961


def test_a_change_in_how_lines_are_read_invalidates_raw_caches_only(monkeypatch, data_dir):
    """Prepared folders of raw logs are keyed by READ_VERSION: an upgrade that reads lines differently (a trace's
    exception kept, say) rebuilds them, where reusing them trained on old reading and served with the new one
    (template ids shifted: `eval.served_check` scores off by 1.4e-2); session datasets keep their folders."""
    import fusionlog.prepare as prep
    from fusionlog.config import EmbedConfig, ParseConfig

    def keys() -> tuple[str, str]:
        return tuple(prep.cache_key(n, data_dir, ParseConfig(), None, None, EmbedConfig()) for n in ("bgl", "hdfs"))

    before = keys()
    monkeypatch.setattr(prep, "READ_VERSION", prep.READ_VERSION + 1)
    after = keys()
    assert after[0] != before[0] and after[1] == before[1]
