"""SessionModel and its inputs: length cap, rarity statistics, shapes, padding, save/load round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fusionlog.constants import CONFIG_NAME, MODEL_WEIGHTS_NAME
from fusionlog.errors import ArtifactError, ConfigError
from fusionlog.model import (
    ANCHOR_TEXTS,
    N_EVENT_FEATURES,
    N_SESSION_FEATURES,
    RARITY_GAIN,
    SURPRISE_FEATURE,
    ReferenceStats,
    SessionModel,
    SessionModelConfig,
    cap_events,
    collapse_repeats,
    encode_sessions,
    make_batch,
    score_encoded,
    surprising,
)
from fusionlog.types import Session

TINY = SessionModelConfig(hidden=8, attention_dim=8, head_hidden=8, max_len=16, dropout=0.0)


def _sessions(ids_list, label=None, system="t"):
    return [Session(system, f"k{i}", list(ids), label) for i, ids in enumerate(ids_list)]


def _tiny_model(seed: int = 0, config: SessionModelConfig = TINY) -> SessionModel:
    torch.manual_seed(seed)
    model = SessionModel(config)
    model.set_anchor_vectors(torch.nn.functional.normalize(torch.randn(config.anchors, config.input_dim), dim=1))
    return model.eval()


def test_collapse_and_cap_keep_every_distinct_template():
    assert collapse_repeats([1, 1, 2, 2, 2, 1]) == [1, 2, 1]
    assert cap_events([5, 5, 5, 6], 8) == [5, 6]
    # 40 steps alternating over 10 templates: too long after collapsing, so first occurrences are kept
    seq = [i % 10 for i in range(40)]
    assert cap_events(seq, 12) == list(range(10))
    # 30 distinct templates > max_len: first and last halves
    assert cap_events(list(range(30)), 10) == [0, 1, 2, 3, 4, 25, 26, 27, 28, 29]


def test_reference_stats_rarity_and_leave_one_out():
    corpus = _sessions([[0, 1], [0, 1], [0, 2]])
    stats = ReferenceStats.from_sessions(corpus, n_templates=4)
    assert stats.doc_freq.tolist() == [3, 2, 1, 0]
    r = stats.event_rarity([0, 2, 3, -1], in_corpus=False)
    assert r[0] == pytest.approx(0.0)  # in every session
    assert r[2] == pytest.approx(1.0) and r[3] == pytest.approx(1.0)  # unseen and unknown
    assert 0.0 < r[1] < 1.0
    # template 2 occurs once: counted out for the session that holds it, it is "in no other session"
    assert stats.event_rarity([2], in_corpus=True)[0] == pytest.approx(1.0)
    f_new = stats.session_features([0, 1], in_corpus=False)
    f_own = stats.session_features([0, 1], in_corpus=True)
    assert f_own[0] > f_new[0]  # one fewer *other* session shares the set
    back = ReferenceStats.from_dict(stats.to_dict())
    assert back.set_counts == stats.set_counts and back.doc_freq.tolist() == stats.doc_freq.tolist()


def test_missing_everyday_tells_a_broken_workflow_from_a_rare_extra():
    # 20 ordinary lifecycles [0..4], 4 of them with a rare benign extra (5); template 3 is optional (12/20)
    ordinary = [[0, 1, 2, 4] if i % 2 else [0, 1, 2, 3, 4] for i in range(16)]
    corpus = _sessions(ordinary + [[0, 1, 2, 3, 4, 5]] * 4)
    stats = ReferenceStats.from_sessions(corpus, n_templates=7)
    full, extra = stats.session_features([0, 1, 2, 3, 4], False), stats.session_features([0, 1, 2, 3, 4, 5], False)
    no_optional = stats.session_features([0, 1, 2, 4], False)
    broken = stats.session_features([0, 6], False)  # never got past step 0, plus an unseen error line
    assert full[3] == pytest.approx(0.0, abs=1e-6)  # lacks nothing
    assert extra[3] == pytest.approx(full[3], abs=1e-6)  # a rare extra adds nothing missing...
    assert extra[1] > full[1] + 0.3  # ...though its max rarity is high: the features disagree on purpose
    assert 0.0 < no_optional[3] < 0.5  # lacking what nearly half the corpus lacks costs little
    assert broken[3] == pytest.approx(1.0)  # lacking 4 templates every session has: capped at 1
    # leave-one-out: a corpus session lacking the optional template counts one fewer other such session
    assert stats.session_features([0, 1, 2, 4], True)[3] > no_optional[3]


def test_missing_everyday_ranks_real_openstack_failures_above_rare_normal_lifecycles(data_dir):
    """On real OpenStack instances (labels only score): adding the feature to the untrained rarity mean
    lifts the ranking, because failed builds lack the spawn steps while rare normal ones only add a line."""
    from sklearn.metrics import roc_auc_score

    from fusionlog.data import load_dataset

    ds = load_dataset("openstack", data_dir, progress=False)
    stats = ReferenceStats.from_sessions(ds.sessions, len(ds.templates))
    feats = np.stack([stats.session_features(s.event_ids, in_corpus=True) for s in ds.sessions])
    labels = np.array([s.label for s in ds.sessions])
    spawned = next(i for i, t in enumerate(ds.templates) if "Instance spawned successfully" in t)
    lacks_spawn = np.array([spawned not in s.event_ids for s in ds.sessions])
    assert feats[lacks_spawn, 3].mean() > 0.5 > feats[~lacks_spawn, 3].mean()
    without, with_missing = roc_auc_score(labels, feats[:, :3].mean(1)), roc_auc_score(labels, feats.mean(1))
    assert with_missing > without + 0.01, (without, with_missing)


def test_surprise_counts_departures_in_units_of_one_unseen_template():
    # 16 ordinary lifecycles [0..4] (template 3 optional, in half), 4 of them with a rare benign extra (5)
    ordinary = [[0, 1, 2, 4] if i % 2 else [0, 1, 2, 3, 4] for i in range(16)]
    corpus = _sessions(ordinary + [[0, 1, 2, 3, 4, 5]] * 4)
    stats = ReferenceStats.from_sessions(corpus, n_templates=8)
    full = stats.surprise([0, 1, 2, 3, 4], False)
    extra_unseen = stats.surprise([0, 1, 2, 3, 4, 6], False)
    broken = stats.surprise([0, 6, 7], False)  # stopped after step 0, two unseen error lines
    assert full < 0.5  # the ordinary lifecycle departs in no strong way
    assert extra_unseen == pytest.approx(full + 1.0, abs=1e-6)  # one never-seen template = exactly one unit
    assert broken > 4.0  # three everyday steps lacking plus two unseen lines: several units
    # the negative log-likelihood under independent per-template frequencies, (count+1)/(N+1), over log(N+1)
    n, df = 20, stats.doc_freq
    key = {0, 1, 2, 4}
    agree = [df[t] if t in key else n - df[t] for t in range(8)]
    expected = sum(np.log((n + 1) / (a + 1)) for a in agree) / np.log(n + 1)
    assert stats.surprise(sorted(key), False) == pytest.approx(expected, rel=1e-6)
    assert stats.surprise([0, 1, 2, 4], True) > stats.surprise([0, 1, 2, 4], False)  # leave-one-out
    assert stats.surprise([0, 1, 2, 3, 4, 99], False) == pytest.approx(full + 1.0, abs=1e-6)  # unknown id: unseen
    # the squashed feature: 1 unit sits at 0.5, and `surprising` reads that column
    feats = np.stack([stats.session_features(k, False) for k in ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 6], [0, 6, 7])])
    assert feats[:, SURPRISE_FEATURE] == pytest.approx([f / (1 + f) for f in (full, extra_unseen, broken)], rel=1e-5)
    assert surprising(feats).tolist() == [False, True, True]


def test_have_weights_scale_only_what_a_session_has_and_survive_saving():
    ordinary = [[0, 1, 2, 4] if i % 2 else [0, 1, 2, 3, 4] for i in range(16)]
    stats = ReferenceStats.from_sessions(_sessions(ordinary + [[0, 1, 2, 3, 4, 5]] * 4), n_templates=8)
    full, routine, unseen = [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 6]
    plain = {tuple(k): stats.surprise(k, False) for k in (full, routine, unseen, [0, 6, 7])}
    ones = stats.with_have_weights(np.ones(8))
    assert all(ones.surprise(list(k), False) == pytest.approx(v, abs=1e-9) for k, v in plain.items())
    w = np.ones(8)
    w[5], w[6] = 0.0, 2.0  # an LLM finds 5 routine and 6 a problem
    weighted = stats.with_have_weights(w)
    rarity5 = float(stats.event_rarity([5], False)[0])
    assert weighted.surprise(routine, False) == pytest.approx(plain[tuple(routine)] - rarity5, abs=1e-9)
    assert weighted.surprise(unseen, False) == pytest.approx(plain[tuple(full)] + 2.0, abs=1e-6)
    assert weighted.surprise(full, False) == pytest.approx(plain[tuple(full)], abs=1e-9)  # lacking 5, 6: unchanged
    assert stats.have_weights is None  # a copy: the plain stats are untouched
    back = ReferenceStats.from_dict(json.loads(json.dumps(weighted.to_dict())))
    assert back.surprise(unseen, False) == pytest.approx(weighted.surprise(unseen, False), abs=1e-6)
    assert ReferenceStats.from_dict(stats.to_dict()).have_weights is None  # older artifacts: plain
    for bad in (np.ones(7), np.full(8, -1.0), np.full(8, np.nan)):
        with pytest.raises(ConfigError):
            stats.with_have_weights(bad)
    with pytest.raises(ArtifactError):
        ReferenceStats.from_dict({**stats.to_dict(), "have_weights": [1.0] * 3})


def test_surprise_flags_real_openstack_failures_at_one_unit(data_dir):
    """On real OpenStack instances (labels only score): failed builds lack several spawn steps and add error
    lines, rare normal ones add one line, so the a-priori cut at 1 unit separates them; max rarity does not."""
    from sklearn.metrics import f1_score

    from fusionlog.data import load_dataset, split_sessions

    ds = load_dataset("openstack", data_dir, progress=False)
    split = split_sessions(ds)
    stats = ReferenceStats.from_sessions(split.pool, len(ds.templates))
    labels = np.array([s.label for s in split.test])
    feats = np.stack([stats.session_features(s.event_ids, in_corpus=False) for s in split.test])
    at_one_unit = f1_score(labels, surprising(feats))
    best_max_rarity = max(f1_score(labels, feats[:, 1] > t) for t in np.unique(feats[:, 1]))
    assert at_one_unit > 0.9 and at_one_unit > best_max_rarity + 0.1, (at_one_unit, best_max_rarity)


def test_model_reads_only_its_own_number_of_session_features():
    """Features are append-only: an artifact trained on 3 scores the same when 4 are computed."""
    model = _tiny_model(config=SessionModelConfig(**{**TINY.__dict__, "session_features": 3, "wide_features": "all"}))
    x, mask = torch.randn(2, 5, 384 + N_EVENT_FEATURES), torch.ones(2, 5, dtype=torch.bool)
    sf = torch.rand(2, N_SESSION_FEATURES)
    assert N_SESSION_FEATURES > 3
    with torch.no_grad():
        assert torch.equal(model(x, mask, sf).logits, model(x, mask, sf[:, :3]).logits)


def test_unit_floor_is_the_lowest_logit_of_a_session_at_one_unit():
    config = SessionModelConfig(**{**TINY.__dict__, "wide_features": "surprise", "deep_bound": 0.3})
    model = _tiny_model(config=config)
    with torch.no_grad():
        model.bias.fill_(0.05)
        for p in model.head.parameters():
            p.normal_(0.0, 3.0)  # a deep path that uses its whole bound
    x, mask = torch.randn(64, 5, 384 + N_EVENT_FEATURES), torch.ones(64, 5, dtype=torch.bool)
    sf = torch.rand(64, N_SESSION_FEATURES)
    sf[:, SURPRISE_FEATURE] = 0.5  # exactly 1 unit
    with torch.no_grad():
        at_unit = model(x, mask, sf).logits
        sf[:, SURPRISE_FEATURE] = 0.6  # above 1 unit
        above = model(x, mask, sf).logits
    floor = model.unit_floor()
    assert floor == pytest.approx(0.5 - 0.3)
    assert (at_unit >= floor - 1e-6).all() and (above > floor).all()
    assert at_unit.min() < floor + 0.1  # the floor is reached, not a loose bound
    assert _tiny_model(config=SessionModelConfig(**{**TINY.__dict__, "wide_features": "all"})).unit_floor() is None
    unbounded = SessionModelConfig(**{**TINY.__dict__, "wide_features": "surprise", "deep_bound": 0.0})
    assert _tiny_model(config=unbounded).unit_floor() is None


def test_surprise_wide_path_ranks_by_surprise_alone_and_round_trips(tmp_path):
    """With wide_features='surprise' the other features cannot move the logit, and the bounded deep path only
    breaks near-ties: sessions rank by surprise."""
    config = SessionModelConfig(**{**TINY.__dict__, "wide_features": "surprise"})
    model = _tiny_model(config=config)
    assert model.rarity_weights().shape == (1,)
    x, mask = torch.randn(4, 5, 384 + N_EVENT_FEATURES), torch.ones(4, 5, dtype=torch.bool)
    sf = torch.rand(4, N_SESSION_FEATURES)
    sf[:, SURPRISE_FEATURE] = torch.tensor([0.1, 0.7, 0.3, 0.5])
    shuffled = sf.clone()
    shuffled[:, :SURPRISE_FEATURE] = torch.rand(4, SURPRISE_FEATURE)  # other features change, surprise does not
    with torch.no_grad():
        logits = model(x, mask, sf).logits
        assert torch.equal(logits, model(x, mask, shuffled).logits)
    assert logits.argsort().tolist() == [0, 2, 3, 1]
    model.save_pretrained(tmp_path)
    back = SessionModel.from_pretrained(tmp_path)
    assert back.config.wide_features == "surprise"
    with torch.no_grad():
        assert torch.allclose(back(x, mask, sf).logits, logits)
    with pytest.raises(ConfigError, match="wide_features"):
        SessionModelConfig(wide_features="everything")
    # an artifact saved before the field existed learned weights for all its features: it loads as 'all'
    old = _tiny_model(config=SessionModelConfig(**{**TINY.__dict__, "wide_features": "all"}))
    old.save_pretrained(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / CONFIG_NAME).read_text())
    del meta["model"]["wide_features"]
    (tmp_path / "old" / CONFIG_NAME).write_text(json.dumps(meta))
    loaded = SessionModel.from_pretrained(tmp_path / "old")
    assert loaded.config.wide_features == "all" and loaded.rarity_weights().shape == (N_SESSION_FEATURES,)
    with torch.no_grad():
        assert torch.allclose(loaded(x, mask, sf).logits, old(x, mask, sf).logits)
    with pytest.raises(ConfigError, match="needs session_features"):
        SessionModelConfig(wide_features="surprise", session_features=4)


def test_encode_deduplicates_identical_sessions():
    sess = _sessions([[0, 1], [0, 1], [0, 0, 1], [2]], label=0)
    stats = ReferenceStats.from_sessions(sess, 3)
    enc = encode_sessions(sess, stats, max_len=8, in_corpus=True)
    # [0,1] twice and [0,0,1] (same after collapsing repeats, same set) form one group
    assert len(enc) == 2
    assert enc.counts.tolist() == [3, 1]
    assert enc.index.tolist() == [0, 0, 0, 1]


def test_forward_shapes_attention_and_padding_invariance(prepared):
    p = prepared("openstack")
    sessions = p.dataset.sessions[:6]
    stats = ReferenceStats.from_sessions(p.dataset.sessions, len(p.dataset.templates))
    enc = encode_sessions(sessions, stats, TINY.max_len, in_corpus=True)
    vectors = torch.from_numpy(p.vectors)
    model = _tiny_model()
    batch = make_batch(enc, list(range(len(enc))), vectors)
    out = model(batch.x, batch.mask, batch.session_features)
    b, t = batch.mask.shape
    assert out.logits.shape == (b,)
    assert out.features.shape == (b, TINY.feature_dim)
    assert out.attention.shape == (b, t)
    assert torch.allclose(out.attention.sum(1), torch.ones(b), atol=1e-5)
    assert torch.all(out.attention[~batch.mask] == 0)
    # a session scored alone (no padding) gets the same logit as inside the padded batch
    for g in range(len(enc)):
        alone = make_batch(enc, [g], vectors)
        logit = model(alone.x, alone.mask, alone.session_features).logits
        assert logit.item() == pytest.approx(out.logits[g].item(), abs=1e-5)


def test_save_load_gives_identical_scores(tmp_path, prepared):
    p = prepared("hdfs")
    stats = ReferenceStats.from_sessions(p.dataset.sessions, len(p.dataset.templates))
    enc = encode_sessions(p.dataset.sessions[:300], stats, TINY.max_len, in_corpus=True)
    vectors = torch.from_numpy(p.vectors)
    model = _tiny_model(seed=3)
    with torch.no_grad():  # non-trivial weights: far from the init distribution
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    before = score_encoded(model, enc, vectors)
    model.save_pretrained(tmp_path)
    files = {f.name for f in tmp_path.iterdir()}
    assert {CONFIG_NAME, MODEL_WEIGHTS_NAME} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".bin", ".pickle"))]
    loaded = SessionModel.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    np.testing.assert_array_equal(before, score_encoded(loaded, enc, vectors))


def test_from_pretrained_refuses_missing_or_foreign_files(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        SessionModel.from_pretrained(tmp_path)
    _tiny_model().save_pretrained(tmp_path)
    cfg = tmp_path / CONFIG_NAME
    cfg.write_text(cfg.read_text().replace('"SessionModel"', '"Evil"'))
    with pytest.raises(ArtifactError, match="model_type"):
        SessionModel.from_pretrained(tmp_path)


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="hidden"):
        SessionModelConfig(hidden=0)
    with pytest.raises(ConfigError, match="dropout"):
        SessionModelConfig(dropout=1.5)
    assert len(ANCHOR_TEXTS) == SessionModelConfig().anchors


def test_widening_the_deep_path_starts_it_at_zero():
    """The rounds widen a tight deep-path bound; the widened path must not shuffle scores before teaching."""
    torch.manual_seed(0)
    model = SessionModel(SessionModelConfig(hidden=8, attention_dim=8, head_hidden=8, anchors=0, vector_features=4,
                                            deep_bound=0.01, dropout=0.0)).eval()
    x, mask = torch.randn(5, 7, 384 + N_EVENT_FEATURES), torch.ones(5, 7, dtype=torch.bool)
    sf = torch.rand(5, N_SESSION_FEATURES)
    with torch.no_grad():
        wide_only = (model.wide_inputs(sf) - 0.5) @ model.rarity_weights() + RARITY_GAIN * model.bias
        before = model(x, mask, sf).logits
        assert (before - wide_only).abs().max() <= 0.01 + 1e-6
        assert model.widen_deep_path(0.3) and model.config.deep_bound == 0.3
        torch.testing.assert_close(model(x, mask, sf).logits, wide_only)  # no deep contribution yet
    assert not model.widen_deep_path(0.2) and model.config.deep_bound == 0.3  # never narrows
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):  # the widened path can learn: push one session's score up
        opt.zero_grad()
        (-model(x, mask, sf).logits[0]).backward()
        opt.step()
    with torch.no_grad():
        deep = model.eval()(x, mask, sf).logits - ((model.wide_inputs(sf) - 0.5) @ model.rarity_weights()
                                                  + RARITY_GAIN * model.bias)
    assert 0.05 < deep[0] <= 0.3  # the deep path itself moved, within its new bound


def test_a_batch_can_train_the_wide_path_without_the_deep_one():
    """The rounds keep the source loss out of the GRU: only the target's teacher labels teach it."""
    torch.manual_seed(0)
    model = SessionModel(SessionModelConfig(hidden=8, attention_dim=8, head_hidden=8, anchors=0, vector_features=4,
                                            deep_bound=1.0, dropout=0.0))
    x, mask = torch.randn(4, 5, 384 + N_EVENT_FEATURES), torch.ones(4, 5, dtype=torch.bool)
    sf = torch.rand(4, N_SESSION_FEATURES)
    for deep_grad in (False, True):
        model.zero_grad(set_to_none=True)
        model(x, mask, sf, deep_grad=deep_grad).logits.sum().backward()
        gru = model.gru.weight_ih_l0.grad
        assert model.rarity_weight.grad.abs().sum() > 0 and model.bias.grad.abs().sum() > 0
        assert (gru is not None and gru.abs().sum() > 0) == deep_grad


def test_trimmed_reference_leaves_out_the_pool_sessions_the_rule_flags():
    """95 ordinary lifecycles and 5 failures (stopped after step 0, one error line) in one unlabelled pool:
    counted in the corpus, the failures make their own error line less rare; trimmed, the corpus is the
    ordinary sessions, and a failure (in the pool or new) scores as never seen."""
    ordinary, failure = [0, 1, 2, 3], [0, 4]
    pool = _sessions([ordinary] * 95 + [failure] * 5)
    full = ReferenceStats.from_sessions(pool, n_templates=6)
    trimmed = ReferenceStats.from_sessions(pool, n_templates=6, trim=True)
    assert full.n_sessions == 100 and trimmed.n_sessions == 95
    assert set(trimmed.set_counts) == {(0, 1, 2, 3)} and trimmed.doc_freq.tolist() == [95, 95, 95, 95, 0, 0]
    assert 1.0 < full.surprise(failure, False) < trimmed.surprise(failure, False)
    assert trimmed.surprise(failure, False) == pytest.approx(4.0, abs=1e-6)  # lacks 1, 2, 3; has unseen 4
    # a pool failure the corpus left out is scored as a new session (nothing of it to count out) ...
    assert not trimmed.counts_itself(failure, True) and trimmed.counts_itself(ordinary, True)
    assert trimmed.surprise(failure, True) == trimmed.surprise(failure, False)
    assert trimmed.session_features(failure, True).tolist() == trimmed.session_features(failure, False).tolist()
    # ... and an ordinary pool session still leave-one-out
    assert trimmed.surprise(ordinary, True) > trimmed.surprise(ordinary, False)
    enc = encode_sessions(pool, trimmed, 16, in_corpus=True)
    assert surprising(enc.session_features).tolist() == [False, True]
    # the fixed point: what it keeps is within 1 unit of it, what it drops is above
    assert trimmed.surprise(ordinary, True) <= 1.0 < trimmed.surprise(failure, True)
    back = ReferenceStats.from_dict(json.loads(json.dumps(trimmed.to_dict())))
    assert not back.counts_itself(failure, True) and back.surprise(failure, True) == pytest.approx(4.0, abs=1e-6)
    # a pool with no session within 1 unit of the others has no normal side: the full corpus, as untrimmed
    scattered = _sessions([[i, 10 + i] for i in range(8)])
    as_is, kept = ReferenceStats.from_sessions(scattered, 20), ReferenceStats.from_sessions(scattered, 20, trim=True)
    assert kept.n_sessions == as_is.n_sessions == 8 and kept.set_counts == as_is.set_counts
    assert kept.doc_freq.tolist() == as_is.doc_freq.tolist()


def test_trimmed_reference_of_a_real_pool_keeps_its_normal_side(data_dir):
    """OpenStack's unlabelled pool (labels only score): the sessions trimming drops are its failures, what it
    keeps is within 1 unit of the kept corpus, and the 1-unit cut on the test part loses nothing by it."""
    from sklearn.metrics import f1_score

    from fusionlog.data import load_dataset, split_sessions

    ds = load_dataset("openstack", data_dir, progress=False)
    split = split_sessions(ds)
    full = ReferenceStats.from_sessions(split.pool, len(ds.templates))
    trimmed = ReferenceStats.from_sessions(split.pool, len(ds.templates), trim=True)
    kept = np.array([trimmed.counts_itself(s.event_ids, True) for s in split.pool])
    labels = np.array([s.label for s in split.pool])
    assert trimmed.n_sessions == kept.sum() and 0 < (~kept).sum() < 0.2 * len(kept)
    assert labels[~kept].mean() > 0.9 and labels[kept].mean() < 0.01 < labels.mean()
    pool_surprise = np.array([trimmed.surprise(s.event_ids, True) for s in split.pool])
    assert (pool_surprise[kept] <= 1.0).all() and (pool_surprise[~kept] > 1.0).all()
    y = np.array([s.label for s in split.test])
    f1 = [f1_score(y, [st.surprise(s.event_ids, False) > 1.0 for s in split.test]) for st in (full, trimmed)]
    assert f1[1] >= f1[0] > 0.9, f1
