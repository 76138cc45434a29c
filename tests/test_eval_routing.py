"""The harness reports the router's split of the test set and per-part metrics for every method."""

from __future__ import annotations

from eval.protocol import EvalConfig, run_eval


def test_results_carry_router_split_and_per_part_metrics(cache_root, embedder, data_dir):
    cfg = EvalConfig(target="hdfs", sources=("openstack", "hadoop"), methods=("unseen-template",), seeds=(0,))
    run = run_eval(cfg, data_dir, cache_root / "prepared", embedder=embedder)
    res = run.results
    assert res["router"] is not None
    parts = res["methods"]["unseen-template"]["seeds"][0]["parts"]
    assert set(parts) <= {"general", "proprietary"}
    assert sum(p["sessions"] for p in parts.values()) == res["split"]["test_sessions"]
    assert sum(p["anomalies"] for p in parts.values()) == res["split"]["test_anomalies"]
