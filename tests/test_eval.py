"""Benchmark harness: metrics, threshold rules, the label guard, and one tiny end-to-end `fusionlog eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.methods import METHODS, MethodOptions, TargetContext, register_method
from eval.metrics import average_precision, binary_metrics, prf, roc_auc
from eval.protocol import default_sources, run_method
from fusionlog.data import hide_labels
from fusionlog.detector import DEFAULT_THRESHOLD_RULE, SystemSessions
from fusionlog.errors import ConfigError
from fusionlog.threshold import best_f1_threshold, choose_threshold, otsu_threshold, quantile_threshold
from fusionlog.training import LabelLeakError


def test_metrics_on_a_hand_computed_case():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    # positives 0.35, 0.8, 0.9 vs negatives 0.1, 0.2, 0.4: 8 of 9 pairs ordered
    assert roc_auc(labels, scores) == pytest.approx(8 / 9)
    # ranking 0.9(+) 0.8(+) 0.4(-) 0.35(+): AP = (1 + 1 + 3/4) / 3
    assert average_precision(labels, scores) == pytest.approx((1 + 1 + 0.75) / 3)
    assert prf(labels, scores > 0.5) == pytest.approx((1.0, 2 / 3, 0.8))
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # ties count half
    m = binary_metrics(labels, scores, 0.3)
    assert set(m) == {"precision", "recall", "f1", "roc_auc", "pr_auc"}


def test_metrics_agree_with_sklearn_when_installed():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    assert roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores))
    assert average_precision(labels, scores) == pytest.approx(sk.average_precision_score(labels, scores))


def test_threshold_rules_use_no_target_labels():
    rng = np.random.default_rng(0)
    pool = np.r_[rng.normal(-3, 0.5, 950), rng.normal(3, 0.5, 50)]
    assert -1.5 < otsu_threshold(pool) < 1.5
    assert (pool > quantile_threshold(pool, 0.05)).mean() == pytest.approx(0.05)
    thr, f1 = best_f1_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert 0.2 < thr < 0.8 and f1 == pytest.approx(1.0)
    res = choose_threshold(
        "source-f1", source_validation=[("a", np.array([0.0, 1.0]), np.array([0, 1]), np.array([1, 1]))]
    )
    assert res.source == "held-out source data" and 0.0 < res.value < 1.0
    assert choose_threshold("pool-otsu", pool_scores=pool).source == "target pool scores (unlabelled)"


def test_distinct_otsu_is_not_set_by_one_dominant_behaviour():
    """Half the pool is one normal behaviour: counted per session, Otsu splits it from everything else."""
    common = np.zeros(1)
    ordinary = np.linspace(0.9, 1.1, 20)  # 20 other normal behaviours, 10 sessions each
    rare = np.linspace(2.9, 3.1, 5)  # 5 rare behaviours, once each
    scores, counts = np.r_[common, ordinary, rare], np.r_[1000.0, np.full(20, 10.0), np.ones(5)]
    per_session = choose_threshold("pool-otsu", pool_scores=scores, pool_weights=counts)
    distinct = choose_threshold("pool-otsu-distinct", pool_scores=scores, pool_weights=counts)
    assert per_session.value < 0.9 and per_session.details["pool_flagged_share"] > 0.15
    assert 1.1 <= distinct.value < 2.9 and distinct.details["pool_flagged_share"] == pytest.approx(5 / 1205, abs=1e-4)
    # the counts do not enter: the same behaviours with other multiplicities get the same split
    again = choose_threshold("pool-otsu-distinct", pool_scores=scores, pool_weights=np.ones(len(scores)))
    assert again.value == distinct.value and distinct.details["distinct_inputs"] == len(scores)


def test_surprise_rule_borrows_the_one_unit_cut_and_keeps_the_model_ranking():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.5])
    counts = np.array([100.0, 50.0, 10.0, 3.0, 2.0, 1.0])
    pseudo = np.array([False, False, False, True, True, False])  # the model ranks one input above the cut
    res = choose_threshold("pool-surprise", pool_scores=scores, pool_weights=counts, pool_surprising=pseudo)
    assert 0.3 < res.value < 0.9  # best agreement: flag the three top-scored inputs (F1 10/11 over sessions)
    assert res.details["pool_surprising_share"] == pytest.approx(5 / 166, abs=1e-4)
    everything = choose_threshold("pool-surprise", pool_scores=scores, pool_surprising=np.ones(6, bool))
    nothing = choose_threshold("pool-surprise", pool_scores=scores, pool_surprising=np.zeros(6, bool))
    assert (scores > everything.value).all() and not (scores > nothing.value).any()
    with pytest.raises(ConfigError, match="surprise verdict"):
        choose_threshold("pool-surprise", pool_scores=scores)


def test_surprise_rule_cuts_at_the_one_unit_floor_when_the_whole_pool_is_surprising():
    """With no normal side in the pool, the cut falls to the lowest score a 1-unit session can get, never
    above the pool's lowest score; with a normal side the floor is not read."""
    scores = np.array([0.4, 0.5, 0.9, 1.2])
    low = choose_threshold("pool-surprise", pool_scores=scores, pool_surprising=np.ones(4, bool), unit_floor=-0.2)
    assert low.value == -0.2 and low.details["cut"] == "1-unit floor"
    high = choose_threshold("pool-surprise", pool_scores=scores, pool_surprising=np.ones(4, bool), unit_floor=3.0)
    assert 0.39 < high.value < 0.4 and high.details["cut"] == "under the pool"
    mixed = np.array([False, False, True, True])
    assert (choose_threshold("pool-surprise", pool_scores=scores, pool_surprising=mixed, unit_floor=-0.2).value
            == choose_threshold("pool-surprise", pool_scores=scores, pool_surprising=mixed).value)


def _context(prepared, pool_labels: bool = False, test_labels: bool = False) -> TargetContext:
    target = prepared("bgl")
    sessions = target.dataset.sessions
    pool, test = sessions[:60], sessions[60:]
    return TargetContext(
        "bgl", "bgl",
        [SystemSessions.from_prepared(prepared("openstack"))],
        SystemSessions.from_prepared(target, pool if pool_labels else hide_labels(pool)),
        test if test_labels else hide_labels(test),
    )


def test_harness_refuses_target_labels_in_training_data(prepared):
    calls = []

    @register_method("_spy", "records that it was called")
    def spy(ctx, seed, options):  # pragma: no cover - must never run
        calls.append(ctx)
        raise AssertionError("a method ran on labelled target data")

    try:
        with pytest.raises(LabelLeakError, match="pool"):
            run_method("_spy", _context(prepared, pool_labels=True), 0, MethodOptions())
        with pytest.raises(LabelLeakError, match="test"):
            run_method("_spy", _context(prepared, test_labels=True), 0, MethodOptions())
        assert not calls
        # the real methods are guarded the same way
        with pytest.raises(LabelLeakError):
            run_method("source-only", _context(prepared, pool_labels=True), 0, MethodOptions())
    finally:
        METHODS.pop("_spy", None)


def test_unseen_template_baseline(prepared):
    ctx = _context(prepared)
    out = run_method("unseen-template", ctx, 0, MethodOptions())
    seen = {e for s in ctx.pool.sessions for e in s.event_ids}
    expected = [len(set(s.event_ids) - seen) for s in ctx.test]
    np.testing.assert_array_equal(out.scores, expected)
    assert out.threshold == 0.5


def test_rarity_baseline_ranks_sessions_by_how_unusual_they_are_in_the_pool(prepared):
    from collections import Counter

    from fusionlog.constants import UNKNOWN_EVENT
    from fusionlog.types import Session

    target = prepared("openstack")
    pool, test = target.dataset.sessions[:1500], hide_labels(target.dataset.sessions[1500:2500])
    sets = Counter(frozenset(s.event_ids) for s in pool)
    common = next(s for s in test if frozenset(s.event_ids) == max(sets, key=sets.get))
    test.append(Session("openstack", "odd", [*common.event_ids, UNKNOWN_EVENT]))  # same + one unknown line
    ctx = TargetContext("openstack", "openstack", [SystemSessions.from_prepared(prepared("bgl"))],
                        SystemSessions.from_prepared(target, hide_labels(pool)), test)
    out = run_method("rarity", ctx, 0, MethodOptions())
    assert out.scores.shape == (len(test),) and ((out.scores >= 0) & (out.scores <= 1)).all()
    odd, usual = out.scores[-1], out.scores[test.index(common)]
    assert usual < out.threshold < odd  # the commonest behaviour passes, the same plus an unknown line is flagged
    assert out.scores.min() == pytest.approx(usual)
    # the threshold is the default rule's split, read from pool scores only
    assert out.extra["threshold_rule"] == DEFAULT_THRESHOLD_RULE
    assert out.extra["threshold_source"].startswith("target pool")
    assert out.arrays["pool_weights"].sum() == len(pool) > len(out.arrays["pool_scores"])  # one per distinct input


def test_surprise_baseline_flags_a_common_lifecycle_with_unknown_lines_not_the_lifecycle(prepared):
    from collections import Counter

    from fusionlog.constants import UNKNOWN_EVENT
    from fusionlog.types import Session

    target = prepared("openstack")
    pool, test = target.dataset.sessions[:1500], hide_labels(target.dataset.sessions[1500:2500])
    sets = Counter(frozenset(s.event_ids) for s in pool)
    common = next(s for s in test if frozenset(s.event_ids) == max(sets, key=sets.get))
    test.append(Session("openstack", "odd", [*common.event_ids, UNKNOWN_EVENT]))
    ctx = TargetContext("openstack", "openstack", [SystemSessions.from_prepared(prepared("bgl"))],
                        SystemSessions.from_prepared(target, hide_labels(pool)), test)
    out = run_method("surprise", ctx, 0, MethodOptions())
    usual, odd = out.scores[test.index(common)], out.scores[-1]
    assert out.threshold == 1.0 and usual < 1.0 < odd
    assert odd == pytest.approx(usual + 1.0, abs=1e-5)  # one unknown line adds exactly one unit
    assert len(out.arrays["pool_scores"]) == len(pool)


def test_eval_model_overrides_are_typed_and_checked():
    from fusionlog.commands.eval import parse_model_overrides
    from fusionlog.errors import ConfigError

    assert parse_model_overrides(["deep_bound=0.25", "rarity_in_gru=true", "hidden=32"]) == {
        "deep_bound": 0.25, "rarity_in_gru": True, "hidden": 32}
    for bad in ("deep_bound", "nope=1", "hidden=x", "deep_bound=-1", "bidirectional=maybe"):
        with pytest.raises(ConfigError):
            parse_model_overrides([bad])


def test_default_sources_never_share_the_target_system():
    assert default_sources("hdfs-100k") == ["openstack", "hadoop", "bgl"]
    assert default_sources("openstack") == ["hdfs", "hadoop", "bgl"]


def test_cli_eval_writes_results_in_the_issue_shape(prepared, cache_root, tmp_path):
    from fusionlog.cli import main

    for name in ("bgl", "hdfs", "openstack", "hadoop"):
        prepared(name)  # fill the test session's prepared cache
    out = tmp_path / "run"
    rc = main([
        "-q", "eval", "--target", "bgl", "--methods", "unseen-template", "source-only", "--seeds", "1",
        "--out", str(out), "--cache-dir", str(cache_root / "prepared"),
        "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
    ])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["target"] == "bgl"
    assert res["sources"] == ["hdfs", "openstack", "hadoop"]
    assert {"pool_sessions", "test_sessions", "test_anomalies"} <= set(res["split"])
    assert res["split"]["pool_sessions"] + res["split"]["test_sessions"] == 100
    keys = {"precision", "recall", "f1", "f1_std", "roc_auc", "pr_auc", "train_seconds", "score_seconds", "seeds"}
    for name in ("unseen-template", "source-only"):
        m = res["methods"][name]
        assert keys <= set(m)
        assert len(m["seeds"]) == 1
        seed = m["seeds"][0]
        assert {"seed", "threshold", "precision", "recall", "f1", "roc_auc", "pr_auc"} <= set(seed)
    assert res["methods"]["source-only"]["seeds"][0]["threshold_rule"]
    assert (out / "results.md").read_text().count("| bgl |") == 2
    assert (out / "roc.png").stat().st_size > 0 and (out / "pr.png").stat().st_size > 0
    # scores.npz keeps what a threshold rule reads, so rules can be compared offline without retraining
    z = np.load(out / "scores.npz", allow_pickle=False)
    assert len(z["labels"]) == res["split"]["test_sessions"]
    assert len(z["source-only/seed0"]) == res["split"]["test_sessions"]
    pool, weights = z["source-only/seed0/pool_scores"], z["source-only/seed0/pool_weights"]
    assert len(pool) == len(weights) > 0 and weights.sum() == res["split"]["pool_sessions"]
    again = choose_threshold(DEFAULT_THRESHOLD_RULE, pool_scores=pool, pool_weights=weights,
                             pool_surprising=z["source-only/seed0/pool_surprising"],
                             unit_floor=float(z["source-only/seed0/unit_floor"][0])).value
    assert again == pytest.approx(res["methods"]["source-only"]["seeds"][0]["threshold"])
    assert {k.split("/")[3] for k in z.files if "/val/" in k} == {"hdfs", "openstack", "hadoop"}


def test_an_interrupted_eval_resumes_with_what_finished(prepared, cache_root, tmp_path):
    """Each (method, seed) is saved as it finishes; `--resume` with the same settings runs only the rest,
    and other settings never reuse a checkpoint."""
    from eval.methods import MethodOutput
    from fusionlog.cli import main

    for name in ("bgl", "hdfs", "openstack", "hadoop"):
        prepared(name)
    calls: list[tuple[str, int]] = []
    crash = {"seed": 1}

    def method(name):
        def run(ctx, seed, options):
            calls.append((name, seed))
            if name == "_flaky" and seed == crash["seed"]:
                raise RuntimeError("killed mid-run")
            lengths = np.array([len(s.event_ids) + 0.1 * seed for s in ctx.test], dtype=np.float32)
            return MethodOutput(lengths, float(np.median(lengths)), arrays={"pool": np.arange(3.0)})
        return run

    register_method("_steady", "counts its runs")(method("_steady"))
    register_method("_flaky", "dies on seed 1 the first time")(method("_flaky"))
    out = tmp_path / "run"
    args = ["-q", "eval", "--target", "bgl", "--methods", "_steady", "_flaky", "--seeds", "2", "--out", str(out),
            "--cache-dir", str(cache_root / "prepared"), "--no-plots"]
    try:
        with pytest.raises(RuntimeError, match="killed"):
            main(args)
        assert calls == [("_steady", 0), ("_steady", 1), ("_flaky", 0), ("_flaky", 1)]
        assert not (out / "results.json").exists()
        crash["seed"] = None
        calls.clear()
        assert main([*args, "--resume"]) == 0
        assert calls == [("_flaky", 1)]  # only what had not finished
        res = json.loads((out / "results.json").read_text())
        assert [e["seed"] for e in res["methods"]["_steady"]["seeds"]] == [0, 1]
        z = np.load(out / "scores.npz", allow_pickle=False)
        assert len(z["_steady/seed1"]) == res["split"]["test_sessions"] and "_flaky/seed0/pool" in z.files
        calls.clear()
        assert main(args) == 0 and len(calls) == 4  # without --resume everything runs again
        resumed = res["methods"]["_steady"]["seeds"]
        fresh = json.loads((out / "results.json").read_text())["methods"]["_steady"]["seeds"]
        assert [e["f1"] for e in resumed] == [e["f1"] for e in fresh]
        calls.clear()
        assert main([*args, "--resume", "--pool-fraction", "0.5"]) == 0 and len(calls) == 4  # other settings
    finally:
        METHODS.pop("_steady", None)
        METHODS.pop("_flaky", None)


def test_model_selection_uses_only_the_source_systems_as_pseudo_targets():
    from eval.select import select

    def runs(f1_os, f1_hadoop, f1_bgl, f1_hdfs):
        by_target = {"openstack": f1_os, "hadoop": f1_hadoop, "bgl": f1_bgl, "hdfs": f1_hdfs}
        systems = ["openstack", "hadoop", "bgl", "hdfs"]
        out = []
        for t in systems:  # each system as the pseudo-target of every pair of others
            others = [s for s in systems if s != t]
            for drop in others:
                out.append((t, [s for s in others if s != drop], {"pool-otsu": (by_target[t], 0.1)}))
        return out

    # "b" is better on hdfs's sources; "a" only on hdfs itself, which must not influence the choice for hdfs
    selection = {"a": runs(0.5, 0.5, 0.5, 0.99), "b": runs(0.6, 0.6, 0.6, 0.0)}
    setting, rule, f1, n = select("hdfs", selection)
    assert (setting, rule, n) == ("b", "pool-otsu", 3) and f1 == pytest.approx(0.6)
    assert select("hdfs-100k", selection)[0] == "b"  # same system as hdfs: hdfs is excluded too
    # for openstack, hdfs is a source: a's 0.99 there now counts
    assert select("openstack", selection)[0] == "a"
    # a setting whose runs lack what a rule reads (NaN) is skipped for that rule, not chosen by default
    nan_first = {"old": runs(float("nan"), float("nan"), float("nan"), float("nan")), "new": runs(0.2, 0.2, 0.2, 0.2)}
    assert select("hdfs", nan_first)[:2] == ("new", "pool-otsu")


def test_threshold_study_applies_every_rule_to_saved_scores(tmp_path):
    from eval.threshold_study import ORACLE, study

    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.1).astype(np.int64)
    scores = labels * 3.0 + rng.normal(0, 0.5, 400)  # separable: the oracle reaches F1 ~1
    pool = np.r_[rng.normal(0, 0.5, 540), rng.normal(3, 0.5, 60)]
    arrays = {"labels": labels, "m/seed0": scores, "m/seed0/pool_scores": pool, "m/seed0/pool_weights": np.ones(600),
              "m/seed0/pool_surprising": pool > 1.5,
              "m/seed0/val/a/scores": np.r_[rng.normal(0, 0.5, 90), rng.normal(3, 0.5, 10)],
              "m/seed0/val/a/labels": np.r_[np.zeros(90), np.ones(10)], "m/seed0/val/a/weights": np.ones(100),
              "other/seed0": scores}  # a method without diagnostics is skipped, not a crash
    np.savez(tmp_path / "scores.npz", **arrays)
    res = study(tmp_path, "m")
    assert set(res) == {"fixed", "source-f1", "pool-otsu", "pool-quantile", "pool-otsu-distinct", "pool-surprise",
                        ORACLE}
    assert res[ORACLE][0] > 0.95 and all(res[ORACLE][0] >= f for f, _ in res.values())
    assert res["pool-otsu"][0] > 0.9 and 0.05 < res["pool-otsu"][1] < 0.15  # bimodal pool: Otsu lands right
    assert res["pool-surprise"][0] > 0.9  # pseudo-labels that match the pool's upper mode
    del arrays["m/seed0/pool_surprising"]  # an older run saved no surprise verdicts: no figure, not a crash
    np.savez(tmp_path / "scores.npz", **arrays)
    assert np.isnan(study(tmp_path, "m")["pool-surprise"][0])
    with pytest.raises(SystemExit, match="no 'other' scores"):
        study(tmp_path, "other")


def test_teacher_quality_counts_each_labelled_sequence_once():
    from eval.teacher_quality import teacher_quality

    nan = float("nan")
    seqs = [(1, 2), (1, 2), (3,), (4,), (5,), (6,)]
    labels = np.array([1, 1, 0, 0, 1, 0])
    probs = np.array([0.9, 0.9, 0.2, 0.7, nan, nan])  # (1,2) twice: one sequence; (5,) and (6,) not asked
    q = teacher_quality(probs, labels, seqs)
    assert q == {"sequences": 3, "anomalous": 1, "roc_auc": 1.0, "accuracy": pytest.approx(2 / 3, abs=1e-4),
                 "called_anomalous": pytest.approx(2 / 3, abs=1e-4)}
    assert teacher_quality(np.full(2, nan), np.array([0, 1]), [(1,), (2,)]) == {"sequences": 0}


def test_a_target_without_test_anomalies_is_refused_with_the_reason(tmp_path, cache_root, data_dir):
    """Thunderbird's 2k lines are all normal: a table of F1 0.000 would read as a detector that missed them."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "eval", "-q", "--target", "thunderbird", "--methods", "surprise",
                           "--seeds", "1", "--no-plots", "--out", str(tmp_path / "ev"), "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "holds no anomalous session" in proc.stderr and "fusionlog fuse --target thunderbird" in proc.stderr
    assert not (tmp_path / "ev" / "results.json").exists()
