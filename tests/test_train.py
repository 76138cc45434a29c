"""Trainers: gradient reversal, the meta step (first and second order), a quality floor, label guards."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fusionlog.data import hide_labels
from fusionlog.model import SessionModel, SessionModelConfig, encode_sessions, make_batch, score_encoded
from fusionlog.threads import torch_threads
from fusionlog.training import LabelLeakError, SystemData, TrainConfig, train_model
from fusionlog.training.adversarial import DomainDiscriminator, dann_schedule, domain_loss, grad_reverse
from fusionlog.training.data import Sampler
from fusionlog.training.loop import weighted_bce
from fusionlog.training.meta import functional_forward, inner_update

TINY = SessionModelConfig(hidden=8, attention_dim=8, head_hidden=8, max_len=16, dropout=0.0)


@pytest.fixture(scope="module")
def anchors(embedder):
    from fusionlog.detector import embed_anchors

    return embed_anchors(embedder)


def _system(prepared, name: str, n: int | None = None, labelled: bool = True) -> SystemData:
    p = prepared(name)
    sessions = p.dataset.sessions if n is None else p.dataset.sessions[:n]
    if not labelled:
        sessions = hide_labels(sessions)
    return SystemData.build(name, p.dataset.system, p.vectors, sessions, TINY.max_len, labelled)


def _model(anchors, seed: int = 0, config: SessionModelConfig = TINY) -> SessionModel:
    torch.manual_seed(seed)
    model = SessionModel(config)
    model.set_anchor_vectors(anchors)
    return model


def test_gradient_reversal_flips_the_sign():
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    (grad_reverse(x, 0.7) * w).sum().backward()
    assert torch.allclose(x.grad, -0.7 * w)
    # identity forward
    assert torch.equal(grad_reverse(x, 0.7), x)


def test_discriminator_gradient_reaches_features_reversed():
    torch.manual_seed(0)
    disc = DomainDiscriminator(4, 8)
    src = torch.randn(6, 4, requires_grad=True)
    tgt = torch.randn(6, 4, requires_grad=True)
    loss, _ = domain_loss(disc, src, tgt, lam=1.0)
    g_rev = torch.autograd.grad(loss, src, retain_graph=True)[0]
    # the same loss without reversal: the discriminator's own direction
    logits = disc.net(torch.cat([src, tgt])).squeeze(-1)
    labels = torch.cat([torch.zeros(6), torch.ones(6)])
    plain = (torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none") / 12).sum()
    g_plain = torch.autograd.grad(plain, src)[0]
    assert torch.allclose(g_rev, -g_plain, atol=1e-6)
    assert dann_schedule(0.0) == 0.0 and dann_schedule(1.0) == pytest.approx(1.0, abs=1e-4)


def _meta_batches(prepared):
    a = _system(prepared, "openstack", 400)
    b = _system(prepared, "hdfs", 400)
    rng = np.random.default_rng(0)
    out = []
    for s in (a, b):
        sampler = Sampler.build(s.encoded, np.arange(len(s.encoded)), 0.5, True, True)
        out.append((make_batch(s.encoded, sampler.draw(rng, 16), s.vectors), sampler))
    return out


def test_meta_step_second_order_has_gradient_through_the_inner_update(prepared, anchors):
    (bs, ss), (bt, st) = _meta_batches(prepared)
    # a wide deep path: under the default tight bound its tanh saturates and passes (almost) no gradient
    model = _model(anchors, config=replace(TINY, deep_bound=1.0))
    params = dict(model.named_parameters())

    def outer_grads(order: str) -> dict[str, torch.Tensor]:
        loss_s = weighted_bce(functional_forward(model, params, bs).logits, bs.labels, ss.class_weight)
        adapted = inner_update(params, loss_s, inner_lr=0.5, order=order)
        # the inner step changed the weights the meta-test loss is computed at
        assert any(not torch.equal(adapted[n], params[n]) for n in params)
        loss_t = weighted_bce(functional_forward(model, adapted, bt).logits, bt.labels, st.class_weight)
        names = list(params)
        return dict(zip(names, torch.autograd.grad(loss_t, [params[n] for n in names], allow_unused=True), strict=True))

    first, second = outer_grads("first"), outer_grads("second")
    # the difference is the term that flows through the inner gradient (the Hessian-vector product)
    diff = sum(float((second[n] - first[n]).abs().sum()) for n in params if second[n] is not None)
    assert diff > 1e-6
    # the gradient into the GRU input weights is non-zero on the second-order path
    assert float(second["gru.weight_ih_l0"].abs().sum()) > 0


@pytest.mark.parametrize("order", ["first", "second"])
def test_meta_training_step_changes_weights(prepared, anchors, order):
    sources = [_system(prepared, "openstack", 300), _system(prepared, "hdfs", 300)]
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=8, meta=True, meta_order=order,
                      adversarial_weight=0.0, val_fraction=0.0, seed=1)
    torch.manual_seed(cfg.seed)
    init = {k: v.clone() for k, v in SessionModel(TINY).state_dict().items()}
    with torch_threads(2):  # training runs on cfg.threads (1) and gives the process its count back
        result = train_model(sources, None, TINY, cfg, anchors)
        assert torch.get_num_threads() == 2  # (the LLM that fuse runs next used to get 1 thread)
    moved = [k for k, v in result.model.state_dict().items() if k in init and not torch.equal(v, init[k])]
    assert "gru.weight_ih_l0" in moved and "head.3.weight" in moved


def test_supervised_model_separates_obvious_anomalies(prepared, anchors):
    """Quality floor on a real source split: OpenStack, trained on 60% of its sessions, tested on the rest.

    Measured (hidden 8, 60 steps, seeds 0-2): F1 0.72-0.76, ROC-AUC ~0.96. All-normal baseline: F1 0.
    """
    from eval.metrics import binary_metrics
    from fusionlog.threshold import best_f1_threshold

    p = prepared("openstack")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(p.dataset.sessions))
    cut = int(0.6 * len(order))
    train = [p.dataset.sessions[i] for i in order[:cut]]
    test = [p.dataset.sessions[i] for i in order[cut:]]
    src = SystemData.build("openstack", "openstack", p.vectors, train, TINY.max_len, True)
    cfg = TrainConfig(epochs=3, steps_per_epoch=20, batch_size=32, meta=False, adversarial_weight=0.0,
                      val_fraction=0.2, seed=0)
    result = train_model([src], None, TINY, cfg, anchors)
    enc = encode_sessions(test, src.stats, TINY.max_len, in_corpus=False)
    scores = score_encoded(result.model, enc, src.vectors)[enc.index]
    labels = np.array([s.label for s in test])
    val = result.validation[0]
    threshold, _ = best_f1_threshold(val.scores, val.labels, val.counts)  # held-out training data only
    m = binary_metrics(labels, scores, threshold)
    assert m["roc_auc"] >= 0.85
    assert m["f1"] >= 0.5  # all-normal baseline: 0.0


def test_training_refuses_labelled_target_pool(prepared, anchors):
    p = prepared("hdfs")
    with pytest.raises(LabelLeakError):
        SystemData.build("hdfs", "hdfs", p.vectors, p.dataset.sessions[:50], TINY.max_len, labelled=False)
    src = _system(prepared, "openstack", 100)
    tgt = _system(prepared, "hdfs", 100, labelled=False)
    tgt.encoded.labels[:] = 1.0  # a label smuggled into the encoded pool
    with pytest.raises(LabelLeakError):
        train_model([src], tgt, TINY, TrainConfig(epochs=1, steps_per_epoch=1), anchors)


def test_train_config_validation():
    from fusionlog.errors import ConfigError

    with pytest.raises(ConfigError, match="meta_order"):
        TrainConfig(meta_order="third")
    with pytest.raises(ConfigError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)
