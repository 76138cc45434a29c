"""The harness reports the router's split of the test set and per-part metrics for every method."""

from __future__ import annotations

import numpy as np

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


import pytest  # noqa: E402


@pytest.mark.slow
def test_llm_methods_run_in_the_harness_with_a_real_small_llm(cache_root, embedder, data_dir, tmp_path):
    """llm-only and fusionlog with SmolLM2-135M (real weights) on the tiny BGL target."""
    cfg = EvalConfig(
        target="bgl", sources=("hdfs", "openstack"), methods=("general", "llm-only", "fusionlog"), seeds=(0,),
        train_overrides={"epochs": 2, "steps_per_epoch": 6},
        llm={"llm": "smollm2-135m", "llm_budget": 3, "rounds": 1, "llm_probe": 0, "teacher": "session",
             "llm_cache": str(tmp_path / "v.sqlite")},
    )
    run = run_eval(cfg, data_dir, cache_root / "prepared", embedder=embedder)
    res = run.results
    for name in ("llm-only", "fusionlog"):
        seed = res["methods"][name]["seeds"][0]
        assert seed["llm"] == "smollm2-135m"
        assert 0 < seed["llm_calls"] <= 3 + 8
        assert 0.0 <= res["methods"][name]["f1"] <= 1.0
    assert res["methods"]["llm-only"]["seeds"][0]["unlabelled_sessions"] < res["split"]["test_sessions"]
    fl = res["methods"]["fusionlog"]["seeds"][0]
    assert fl["rounds_run"] == 1 and len(fl["stages"]) == 2  # round 0 (the general path) and round 1
    assert fl["stages"][-1]["f1"] == pytest.approx(fl["f1"], abs=1e-4)  # the last round is what was scored
    assert fl["deep_bound"] == 1.0  # probe off -> trust 1: the rounds widened the deep path to DistillConfig's
    # the LLM's verdict per pool session is saved for eval.teacher_quality (NaN: not asked)
    probs = run.arrays["fusionlog/seed0/llm_pool_probs"]
    assert probs.shape == (res["split"]["pool_sessions"],)
    assert np.isfinite(probs).sum() >= fl["llm_labelled_sequences"] > 0  # each labelled sequence: >= 1 session
