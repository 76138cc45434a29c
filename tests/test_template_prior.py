"""Template prior: a classifier over the shared template space, trained on the sources' labelled templates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionlog.data import hide_labels
from fusionlog.detector import Detector, SystemSessions, embed_anchors
from fusionlog.errors import ArtifactError, ConfigError
from fusionlog.model import SessionModelConfig
from fusionlog.template_prior import (
    TEMPLATE_PRIOR_NAME,
    LabelledTemplates,
    TemplatePrior,
    TemplatePriorConfig,
    fit_logistic,
    fit_template_prior,
)
from fusionlog.training import TrainConfig

TINY = SessionModelConfig(hidden=8, attention_dim=8, head_hidden=8, max_len=16, dropout=0.0)
FAST = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=8, seed=0, template_prior=True)


def _part(system: str, n_pos: int, n_neg: int, seed: int) -> LabelledTemplates:
    """Unit vectors whose first coordinate says the class (positive = problem), the rest noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_pos + n_neg, 6))
    x[:n_pos, 0] += 3.0
    x[n_pos:, 0] -= 3.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return LabelledTemplates(system, x, np.array([1] * n_pos + [0] * n_neg))


def test_logistic_regression_finds_the_separating_direction_and_shrinks_with_strength():
    parts = [_part("a", 5, 40, 0), _part("b", 30, 6, 1)]
    beta, bias = fit_logistic(parts, strength=10.0)
    assert np.argmax(np.abs(beta)) == 0 and beta[0] > 0
    for p in parts:  # separable: every problem template above every routine one
        z = p.x @ beta + bias
        assert z[p.y == 1].min() > z[p.y == 0].max()
    weak, _ = fit_logistic(parts, strength=0.01)
    assert np.linalg.norm(weak) < np.linalg.norm(beta)  # a stronger L2 penalty, a smaller vector


def test_each_system_and_class_weighs_the_same():
    """A system with many templates of one class must not move the boundary for all: with per-system and
    per-class balance, duplicating a system's templates changes nothing but the total weight, which sets
    the penalty's scale as in scikit-learn (weights sum to n), so C scaled by n_before / n_after undoes it."""
    a, b = _part("a", 4, 40, 2), _part("b", 20, 5, 3)
    beta, bias = fit_logistic([a, b], 1.0)
    doubled = LabelledTemplates("a", np.vstack([a.x, a.x]), np.concatenate([a.y, a.y]))
    beta2, bias2 = fit_logistic([doubled, b], 1.0 * (len(a.y) + len(b.y)) / (2 * len(a.y) + len(b.y)))
    np.testing.assert_allclose(beta, beta2, atol=1e-5)
    assert bias == pytest.approx(bias2, abs=1e-5)


def test_real_sources_rank_the_targets_error_templates_above_its_routine_ones(prepared):
    """Trained on OpenStack, BGL and Hadoop labels only, the prior reads HDFS's templates: the exception and
    error messages above re-replication ("ask ... to replicate") and block allocation, which are routine."""
    sources = [(n, prepared(n).vectors, prepared(n).dataset.sessions) for n in ("openstack", "bgl", "hadoop")]
    prior = fit_template_prior(sources)
    assert prior is not None and set(prior.held_out_auc) == {"openstack", "bgl", "hadoop"}
    assert 0.0 < prior.trust <= 1.0 and prior.trust == pytest.approx(
        2 * np.mean(list(prior.held_out_auc.values())) - 1, abs=1e-6)
    assert prior.strength in TemplatePriorConfig().strengths
    hdfs = prepared("hdfs").dataset
    p = prior.probs(prepared("hdfs").vectors)
    errors = [i for i, t in enumerate(hdfs.templates) if "xception" in t or "Unexpected error" in t]
    routine = [i for i, t in enumerate(hdfs.templates) if "to replicate" in t or "allocateBlock" in t]
    assert len(errors) >= 4 and len(routine) == 2
    assert p[errors].min() > p[routine].max()
    weights = prior.have_weights(prepared("hdfs").vectors)
    assert np.all(weights >= 1 - prior.trust - 1e-9) and np.all(weights <= 1 + prior.trust + 1e-9)
    assert weights[errors].min() > 1.0 > weights[routine].max()


def test_no_prior_without_two_systems_to_measure_it_on(prepared):
    one = [("openstack", prepared("openstack").vectors, prepared("openstack").dataset.sessions)]
    assert fit_template_prior(one) is None  # no held-out system: no trust, so no prior
    unlabelled = [(n, prepared(n).vectors, hide_labels(prepared(n).dataset.sessions)) for n in ("openstack", "bgl")]
    assert fit_template_prior(unlabelled) is None
    with pytest.raises(ConfigError):
        TemplatePriorConfig(strengths=())
    with pytest.raises(ConfigError):
        TemplatePriorConfig(sure=0.4)


def test_prior_round_trips_and_malformed_files_are_refused():
    prior = TemplatePrior(np.array([0.5, -1.0, 2.0]), 0.25, 0.4, 1.0, {"a": 0.7}, {"a": {"anomaly": 3, "normal": 4}})
    again = TemplatePrior.from_dict(json.loads(json.dumps(prior.to_dict())))
    v = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    np.testing.assert_allclose(again.have_weights(v), prior.have_weights(v))
    with pytest.raises(ArtifactError):
        TemplatePrior.from_dict({"weights": [1.0], "bias": 0.0})
    with pytest.raises(ArtifactError):
        TemplatePrior.from_dict({**prior.to_dict(), "trust": 2.0})


def test_detector_applies_saves_and_reloads_its_prior(prepared, embedder, tmp_path):
    sources = [SystemSessions.from_prepared(prepared(n)) for n in ("openstack", "bgl")]
    hdfs = prepared("hdfs")
    pool = SystemSessions.from_prepared(hdfs, hide_labels(hdfs.dataset.sessions[:400]))
    test = hdfs.dataset.sessions[400:700]
    anchors = embed_anchors(embedder)
    det = Detector(TINY, FAST).fit(sources, pool, anchors)
    assert det.prior_ is not None
    np.testing.assert_allclose(det.stats_.have_weights, det.prior_.have_weights(hdfs.vectors))
    det.save_pretrained(tmp_path / "d")
    assert (tmp_path / "d" / TEMPLATE_PRIOR_NAME).is_file()
    back = Detector.from_pretrained(tmp_path / "d")
    np.testing.assert_allclose(back.prior_weights(), det.prior_weights())
    np.testing.assert_array_equal(back.decision_function(test), det.decision_function(test))
    # switched off, the surprise is plain, and saving into the same folder drops the stale prior file
    plain = Detector(TINY, TrainConfig(**{**FAST.__dict__, "template_prior": False})).fit(sources, pool, anchors)
    assert plain.prior_ is None and plain.stats_.have_weights is None
    assert np.all(plain.prior_weights() == 1.0)
    plain.save_pretrained(tmp_path / "d")
    assert not (tmp_path / "d" / TEMPLATE_PRIOR_NAME).exists()
    assert Detector.from_pretrained(tmp_path / "d").prior_ is None


def test_the_prior_is_off_by_default_and_each_command_can_switch_it_on():
    from fusionlog.cli import build_parser

    parse = build_parser().parse_args
    assert TrainConfig().template_prior is False
    assert parse(["fuse", "--target", "openstack"]).template_prior is False
    assert parse(["fuse", "--target", "openstack", "--template-prior"]).template_prior is True
    assert not hasattr(parse(["eval", "--target", "openstack"]), "train_template_prior")  # the default
    assert parse(["eval", "--target", "openstack", "--template-prior"]).train_template_prior is True


def test_the_pseudo_target_study_scores_each_system_from_the_others_only(prepared):
    """`python -m eval.prior_study`'s unit: a system's test split ranked with and without a prior fitted on two
    other systems; the prior ranks the held-out system's labelled templates better than chance."""
    from eval.prior_study import pseudo_target_run

    plan = (("hdfs", ("openstack", "bgl")), ("openstack", ("hdfs", "bgl")), ("bgl", ("hdfs", "openstack")))
    runs = [pseudo_target_run(prepared(t), [prepared(s) for s in srcs]) for t, srcs in plan]
    assert all(r is not None and r.target not in r.sources and 0.0 <= r.trust <= 1.0 for r in runs)
    assert np.mean([r.template_auc for r in runs]) > 0.6
    hdfs = runs[0]
    assert hdfs.auc_plain > 0.95 and 0.0 < hdfs.f1_plain < 1.0  # surprise alone ranks HDFS's blocks well
