"""A real run of the embedded default LLM (Qwen2.5-Coder-0.5B-Instruct, GGUF from six PyPI wheels) on
three real HDFS sessions: assembly + sha256 check + GGUF load + constrained-choice scoring + cache.
Slow (about a minute on 2 cores), still run in CI; skipped only when the wheels are not installed."""

from __future__ import annotations

import importlib.util

import pytest

from distill.models import ALIASES

pytestmark = pytest.mark.slow

PARTS = ALIASES["qwen2.5-coder-0.5b"].source


@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in PARTS.packages),
                    reason=f"embedded LLM not installed: {PARTS.pip_line}")
def test_default_model_labels_three_real_sessions(cache_root, tmp_path):
    from distill.backends.transformers_local import TransformersBackend
    from distill.cache import VerdictCache
    from distill.config import LabelConfig
    from distill.labeller import Labeller
    from distill.models import models_dir
    from distill.prompts import load_prompt
    from fusionlog.data import hide_labels, load_dataset, split_sessions

    backend = TransformersBackend("qwen2.5-coder-0.5b", convert_cache=False)  # cold path, fresh cache
    gguf = models_dir() / PARTS.file_name
    assert gguf.is_file() and gguf.stat().st_size == PARTS.size and str(gguf).startswith(str(cache_root))

    ds = load_dataset("hdfs", progress=False)
    pool = split_sessions(ds).pool
    picked = [s for s in pool if s.label == 1][:1] + [s for s in pool if s.label == 0][:2]
    sessions = hide_labels(picked)
    cfg = LabelConfig(k_examples=0, max_session_tokens=200)
    with VerdictCache(tmp_path / "c.sqlite") as cache:
        run = Labeller(backend, load_prompt(), cfg, cache, progress=False).label(sessions, ds.templates, ds.system)
        again = Labeller(backend, load_prompt(), cfg, cache, progress=False).label(sessions, ds.templates, ds.system)
    st = run.stats
    assert st.calls == st.selected_sequences == len({tuple(s.event_ids) for s in sessions})
    assert st.abstained_sequences == 0
    assert len(run.verdicts) == 3 and all(0.0 < v.prob < 1.0 and v.label in (0, 1) for v in run.verdicts)
    assert st.prompt_tokens > 100 and st.calls_per_second > 0
    assert again.stats.calls == 0 and again.stats.cache_hits == st.calls
    # figures for the record (printed, never asserted: 3 sessions are an anecdote, not a measurement)
    truth = {s.key: s.label for s in picked}
    print({v.key: (truth[v.key], v.prob) for v in run.verdicts}, st.calls_per_second)
