"""Few-shot examples come from the router's FAISS index of labelled source sessions."""

from __future__ import annotations

from distill.retrieval import router_examples
from fusionlog.data import hide_labels
from router import SemanticRouter


def test_router_examples_are_balanced_labelled_source_sessions(prepared):
    sources = [prepared("hdfs"), prepared("hadoop")]
    target = prepared("openstack")
    sessions = hide_labels(target.dataset.sessions[:50])
    router = SemanticRouter().fit(sources)
    route = router.split(target.dataset, target.vectors, sessions=sessions, idf_sessions=sessions)
    examples_for = router_examples(router, route, sessions, k=4)
    ex = examples_for(sessions[0])
    assert len(ex) == 4
    assert sorted(e.label for e in ex) == [0, 0, 1, 1]
    assert {e.system for e in ex} <= {"hdfs", "hadoop"}  # never the target's own sessions
    assert [e.similarity for e in ex] == sorted((e.similarity for e in ex), reverse=True)
    assert all(e.templates for e in ex)
    from fusionlog.types import Session

    assert examples_for(Session("openstack", "unknown", [1, 2])) == []  # not a routed session
