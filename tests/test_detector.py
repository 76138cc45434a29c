"""Detector: fit/decision_function/predict contract, label guard, save → load identical scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionlog.constants import CONFIG_NAME, MODEL_WEIGHTS_NAME, THRESHOLD_NAME, VECTORS_NAME
from fusionlog.data import hide_labels
from fusionlog.detector import REFERENCE_NAME, Detector, SystemSessions, embed_anchors
from fusionlog.errors import ConfigError, NotFittedError
from fusionlog.model import SessionModelConfig
from fusionlog.training import LabelLeakError, TrainConfig

TINY = SessionModelConfig(hidden=8, attention_dim=8, head_hidden=8, max_len=16, dropout=0.0)
FAST = TrainConfig(epochs=1, steps_per_epoch=3, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def fitted(prepared, embedder):
    """A tiny general-path detector: sources openstack + bgl, target hdfs (pool = first 600 sessions)."""
    sources = [SystemSessions.from_prepared(prepared("openstack")), SystemSessions.from_prepared(prepared("bgl"))]
    hdfs = prepared("hdfs")
    pool = hide_labels(hdfs.dataset.sessions[:600])
    det = Detector(TINY, FAST, threshold_rule="pool-otsu")
    det.fit(sources, SystemSessions.from_prepared(hdfs, pool), embed_anchors(embedder))
    return det, hdfs.dataset.sessions[600:900]


def test_contract_scores_threshold_predict(fitted):
    det, test = fitted
    scores = det.decision_function(test)
    assert scores.shape == (len(test),) and scores.dtype == np.float32
    assert np.isfinite(det.threshold_)
    np.testing.assert_array_equal(det.predict(test), (scores > det.threshold_).astype(np.int64))
    assert det.threshold_info_.source == "target pool scores (unlabelled)"
    # labels of the sessions scored are ignored: hiding them changes nothing
    np.testing.assert_array_equal(scores, det.decision_function(hide_labels(test)))
    assert det.decision_function([]).shape == (0,)


def test_not_fitted():
    with pytest.raises(NotFittedError):
        Detector().decision_function([])


def test_fit_refuses_target_labels_and_same_system_sources(prepared, embedder):
    hdfs = prepared("hdfs")
    src = [SystemSessions.from_prepared(prepared("openstack"))]
    labelled_pool = SystemSessions.from_prepared(hdfs, hdfs.dataset.sessions[:100])
    with pytest.raises(LabelLeakError):
        Detector(TINY, FAST).fit(src, labelled_pool, embed_anchors(embedder))
    same = [SystemSessions.from_prepared(hdfs)]
    pool = SystemSessions.from_prepared(prepared("hdfs"), hide_labels(hdfs.dataset.sessions[:100]))
    with pytest.raises(ConfigError, match="system"):
        Detector(TINY, FAST).fit(same, pool, embed_anchors(embedder))


def test_save_load_identical_scores(fitted, tmp_path):
    det, test = fitted
    det.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {CONFIG_NAME, MODEL_WEIGHTS_NAME, VECTORS_NAME, REFERENCE_NAME, THRESHOLD_NAME} <= names
    assert not [n for n in names if n.endswith((".pkl", ".pt", ".bin", ".pickle"))]
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["model_type"] == "Detector"
    loaded = Detector.from_pretrained(tmp_path)
    np.testing.assert_array_equal(det.decision_function(test), loaded.decision_function(test))
    assert loaded.threshold_ == det.threshold_
    np.testing.assert_array_equal(det.predict(test), loaded.predict(test))


def test_rounds_rethreshold_sees_the_pool_as_fit_did(fitted, prepared):
    """The rounds re-apply the rule on distinct inputs; a different grouping would move the threshold."""
    from fusionlog.pipeline import pool_rethreshold

    det, _ = fitted
    pool = hide_labels(prepared("hdfs").dataset.sessions[:600])
    scores, counts = det.pool_decision(pool)
    fit_scores, fit_counts = det.pool_scores_
    assert counts.sum() == len(pool) and len(scores) == len(fit_scores) < len(pool)
    np.testing.assert_allclose(np.sort(scores), np.sort(fit_scores), atol=1e-5)
    np.testing.assert_array_equal(np.sort(counts), np.sort(np.asarray(fit_counts, dtype=np.float64)))
    np.testing.assert_array_equal(det.pool_inputs(pool)[2], det.pool_surprising_)  # pool-surprise's pseudo-labels
    before = det.threshold_
    pool_rethreshold(det, pool)
    assert det.threshold_ == pytest.approx(before, abs=1e-4)


def test_a_pool_with_no_normal_side_still_flags_new_sessions_above_one_unit(prepared, embedder):
    """Hadoop: every pool application departs from the others by more than 1 unit. A new session repeating a
    pool behaviour is less rare than its pool twin (counted against the whole pool), so a cut under the pool's
    lowest score would miss it; the rule cuts at the 1-unit floor and flags every session above 1 unit."""
    from fusionlog.model import ReferenceStats, encode_sessions, surprising

    hadoop = prepared("hadoop")
    pool = hide_labels(hadoop.dataset.sessions[:300])
    sources = [SystemSessions.from_prepared(prepared("openstack")), SystemSessions.from_prepared(prepared("bgl"))]
    det = Detector(TINY, FAST).fit(sources, SystemSessions.from_prepared(hadoop, pool), embed_anchors(embedder))
    assert det.pool_surprising_.all() and det.threshold_info_.details["cut"] == "1-unit floor"
    assert det.threshold_ == det.model_.unit_floor()
    scores = det.decision_function(pool)  # the pool's behaviours, seen again as new sessions
    enc = encode_sessions(pool, ReferenceStats.from_sessions(pool, len(hadoop.vectors)), TINY.max_len, False)
    above_unit = surprising(enc.session_features)[enc.index]
    assert (scores < det.pool_scores_[0].min()).any()  # under the whole pool: the old cut missed these
    assert det.predict(pool)[above_unit].all()
