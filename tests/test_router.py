"""Semantic router: real FAISS, real all-MiniLM-L6-v2 template vectors, real OpenStack/Hadoop/BGL sessions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fusionlog.errors import ConfigError, DataError, NotFittedError
from fusionlog.types import Session, SessionDataset
from router.config import IndexConfig, RouterConfig
from router.index import VectorIndex
from router.router import GENERAL, PROPRIETARY, SemanticRouter, is_informative

REPO = Path(__file__).resolve().parents[1]


class Source:
    """A PreparedDataset stand-in for synthetic targets/sources."""

    def __init__(self, dataset: SessionDataset, vectors: np.ndarray) -> None:
        self.dataset, self.vectors = dataset, vectors


@pytest.fixture(scope="module")
def sources(prepared):
    return [prepared("openstack"), prepared("hadoop"), prepared("bgl")]


@pytest.fixture(scope="module")
def router(sources):
    return SemanticRouter().fit(sources)


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def words(texts) -> set[str]:
    return {w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t)}


def test_router_package_is_this_repo():
    import router as pkg

    assert Path(pkg.__file__).resolve().is_relative_to(REPO)


# -- index -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [IndexConfig(), IndexConfig(flat_max=100, nlist=16, nprobe=16)],
                         ids=["flat", "ivf-all-cells"])
def test_faiss_search_agrees_with_numpy_bruteforce(config):
    base, queries = unit_rows(3000, 384, 0), unit_rows(50, 384, 1)
    index = VectorIndex.build(base, config)
    assert index.kind == ("ivf" if config.flat_max < 3000 else "flat")
    sims, ids = index.search(queries, 10)
    exact = queries @ base.T
    want = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(sims, np.take_along_axis(exact, want, axis=1), atol=1e-5)


def test_index_save_load_and_padding(tmp_path):
    base = unit_rows(5, 32, 2)
    index = VectorIndex.build(base)
    index.save(tmp_path / "x.faiss")
    back = VectorIndex.load(tmp_path / "x.faiss")
    sims, ids = back.search(base, 8)  # k > ntotal: padded with id -1, score -1
    assert (ids[:, :5] >= 0).all() and (ids[:, 5:] == -1).all() and (sims[:, 5:] == -1).all()
    np.testing.assert_array_equal(ids[:, 0], np.arange(5))


def test_index_refuses_non_unit_vectors():
    with pytest.raises(DataError, match="not L2-normalised"):
        VectorIndex.build(np.ones((3, 8), dtype=np.float32))


# -- routing -------------------------------------------------------------------------------------------


def test_identical_template_set_routes_general(router, prepared):
    """A new 'system' that logs exactly Hadoop's templates, in new combinations, is fully known."""
    hadoop = prepared("hadoop")
    ds = hadoop.dataset
    sessions = [Session("clone", f"c{i}", list(reversed(s.event_ids))[: 5 + i % 7], None)
                for i, s in enumerate(ds.sessions[:200])]
    target = SessionDataset("clone", "clone", list(ds.templates), sessions, time_ordered=False)
    result = router.split(target, hadoop.vectors)
    has_text = result.n_templates > 0
    assert has_text.sum() >= 190
    assert all(r == GENERAL for r, h in zip(result.routes, has_text, strict=True) if h)
    np.testing.assert_allclose(result.coverage[has_text], 1.0)
    assert result.general_mask.dtype == np.bool_ and len(result.routes) == len(sessions)


def test_target_sharing_no_words_routes_proprietary(router, sources, embedder):
    templates = [
        "zebra giraffe savanna migration",
        "violin concerto orchestra rehearsal",
        "pineapple mango smoothie blender",
        "glacier avalanche mountaineer summit",
        "sonnet stanza poetry rhyme",
        "penguin iceberg colony waddle",
    ]
    source_words = words(t for s in sources for t in s.dataset.templates)
    assert not words(templates) & source_words, "test vocabulary must be disjoint from the sources"
    sessions = [Session("zoo", f"z{i}", [i % 6, (i + 1) % 6, (i + 2) % 6], None) for i in range(30)]
    target = SessionDataset("zoo", "zoo", templates, sessions, time_ordered=False)
    result = router.split(target, embedder.encode(templates))
    assert result.routes == [PROPRIETARY] * 30
    assert (result.template_similarity < router.thresholds_.tau_template).all()
    assert (result.session_similarity < router.thresholds_.tau_session).all()
    why = result.explain("z3")
    assert why.route == PROPRIETARY and why.coverage == 0.0 and len(why.unmatched) == why.templates == 3
    assert all(m.nearest is not None for m in why.unmatched)


def test_thresholds_are_identical_on_rerun(sources, router):
    again = SemanticRouter(RouterConfig()).fit(list(sources))
    assert again.thresholds_ == router.thresholds_
    th = router.thresholds_
    assert th.template_method == th.session_method == "calibrated"
    assert 0.3 <= th.tau_template <= 0.99 and 0.3 <= th.tau_session <= 0.99


def test_fixed_and_fallback_thresholds(prepared):
    fixed = SemanticRouter(RouterConfig(tau_template=0.8, tau_session=0.7)).fit([prepared("openstack"),
                                                                                 prepared("hadoop")])
    assert (fixed.thresholds_.tau_template, fixed.thresholds_.template_method) == (0.8, "fixed")
    single = SemanticRouter().fit([prepared("openstack")])  # one system: nothing to leave out
    assert single.thresholds_.template_method == "fallback"
    assert single.thresholds_.tau_template == RouterConfig().fallback_tau_template


def test_save_load_round_trip_gives_same_split(router, prepared, tmp_path):
    router.save(tmp_path / "r")
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == ["router.json", "router.sessions.faiss", "router.sessions.json", "router.templates.faiss",
                     "router.templates.json"]
    assert not any(n.endswith((".pkl", ".pt", ".bin", ".npy")) for n in names)
    back = SemanticRouter.load(tmp_path / "r")
    assert back.thresholds_ == router.thresholds_ and back.config == router.config
    target = prepared("bgl")  # a source too: exact matches exercise the nearest-session ids
    a = router.split(target.dataset, target.vectors)
    b = back.split(target.dataset, target.vectors)
    assert a.routes == b.routes
    np.testing.assert_array_equal(a.coverage, b.coverage)
    np.testing.assert_array_equal(a.session_similarity, b.session_similarity)
    np.testing.assert_array_equal(a.template_similarity, b.template_similarity)
    assert a.nearest_session == b.nearest_session and a.template_nearest == b.template_nearest
    assert json.dumps(a.to_dict(sessions=True), sort_keys=True) == json.dumps(b.to_dict(sessions=True), sort_keys=True)


def test_split_subset_is_aligned_and_reads_no_labels(router, prepared):
    hadoop = prepared("hadoop")
    subset = hadoop.dataset.sessions[::7]
    blind = [Session(s.system, s.key, s.event_ids, None) for s in subset]
    a = router.split(hadoop.dataset, hadoop.vectors, sessions=subset)
    b = router.split(hadoop.dataset, hadoop.vectors, sessions=blind)
    assert a.keys == [s.key for s in subset] and a.routes == b.routes
    np.testing.assert_array_equal(a.coverage, b.coverage)


def test_nearest_source_sessions_are_labelled_and_sorted(router, prepared):
    hadoop = prepared("hadoop")
    result = router.split(hadoop.dataset, hadoop.vectors)
    one = router.nearest_source_sessions(result.session_vector(0), k=5)
    assert len(one) == 5
    sims = [n.similarity for n in one]
    assert sims == sorted(sims, reverse=True)
    assert all(n.label in (0, 1) and n.templates and n.system in ("openstack", "hadoop", "bgl") for n in one)
    # a source session finds itself first
    assert one[0].similarity > 0.999 and one[0].system == "hadoop"
    many = router.nearest_source_sessions(result.unique_vectors[:3], k=4, label=1)
    assert len(many) == 3 and all(len(x) == 4 and all(n.label == 1 for n in x) for x in many)


def test_unfitted_router_and_bad_config_raise():
    with pytest.raises(NotFittedError):
        SemanticRouter().split(SessionDataset("x", "x", [], [], False), np.zeros((0, 384), np.float32))
    with pytest.raises(ConfigError, match="quantile"):
        RouterConfig(quantile=1.5)
    with pytest.raises(ConfigError, match="unknown key"):
        from fusionlog.config import config_from_dict

        config_from_dict(RouterConfig, {"tau_tempalte": 0.5})


@pytest.mark.parametrize("text, expected", [
    ("<*>", False), (" <<*>>", False), ("<:NUM:> <:*:> ...", False),
    ("Receiving block <*>", True), ("CE sym <:NUM:>", True),
])
def test_placeholder_only_templates_are_not_informative(text, expected):
    assert is_informative(text) is expected


def test_route_command_json(cache_root, prepared, capsys):
    from fusionlog.cli import main

    prepared("bgl"), prepared("openstack"), prepared("hadoop")  # warm the shared cache
    assert main(["-q", "route", "--target", "bgl", "--sources", "openstack", "hadoop", "--json",
                 "--top", "3", "--session", "lines:1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sessions"] == doc["general"] + doc["proprietary"] == 100
    assert len(doc["top_unmatched"]) == 3 and doc["session"]["key"] == "lines:1"
    assert main(["-q", "route", "--target", "bgl", "--sources", "openstack", "--session", "nope"]) == 2


def test_unknown_event_ids_and_empty_sessions_are_counted_not_fatal(router, prepared):
    hadoop = prepared("hadoop")
    ds = hadoop.dataset
    sessions = [Session("hadoop", "odd", [-1, 5, 5, 10**6], None), Session("hadoop", "empty", [], None)]
    result = router.split(ds, hadoop.vectors, sessions=sessions)
    assert result.unknown_events == 2
    assert result.routes[1] == PROPRIETARY and result.session_similarity[1] == -1.0
    assert result.nearest_session[1] is None and result.n_templates[1] == 0
