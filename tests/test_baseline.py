"""Known-good logs counted into a trained detector's reference (`fusionlog baseline`); detect and serve follow."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest

from fusionlog.baseline import BASELINE_NAME, load_baseline
from fusionlog.cli import main
from fusionlog.detector import Detector
from fusionlog.errors import ArtifactError
from fusionlog.feedback import load_mutes
from fusionlog.served import load_scorer
from fusionlog.stream import StreamLimits, detect_stream, scorer_sessionizer

CORE = "generating core."


@pytest.fixture()
def artifact(bgl_artifact, tmp_path):
    """A copy the test may write its baseline into."""
    return shutil.copytree(bgl_artifact, tmp_path / "det")


@pytest.fixture(scope="module")
def bgl_lines(data_dir) -> list[str]:
    return (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _sessions(folder, lines):
    """The sessions `detect` cuts from `lines` with this detector, as event-id sets (and the scorer that cut them)."""
    scorer = load_scorer(folder)
    sz = scorer_sessionizer(scorer, StreamLimits(idle_seconds=None))
    done = [s for line in lines for s in sz.feed(line)] + sz.flush()
    return [frozenset(s.event_ids) for s in done], scorer


def _deploy(lines):
    """The same lines after a release that reworded BGL's commonest message."""
    return [line.replace(CORE, "writing core dump ") for line in lines]


def _verdicts(folder, lines):
    return list(detect_stream(load_scorer(folder), lines, StreamLimits(idle_seconds=None)))


def test_known_good_sessions_are_counted_into_the_reference_as_the_pool_was(artifact, bgl_lines, tmp_path, capsys):
    trained = Detector.from_pretrained(artifact).stats_
    sets, _ = _sessions(artifact, bgl_lines)  # counted independently: what the reference must gain
    before = _verdicts(artifact, bgl_lines)
    assert main(["baseline", "--model", str(artifact), _write(tmp_path / "good.log", bgl_lines),
                 "--reason", "a healthy day"]) == 0
    out = capsys.readouterr().out
    assert f"learned {len(sets)} sessions (2000 lines) as normal" in out
    assert f"its reference holds {trained.n_sessions + len(sets)} sessions (was {trained.n_sessions})" in out
    stats = load_scorer(artifact).detector.stats_
    n = len(trained.doc_freq)
    df = Counter(e for s in sets for e in s)
    assert stats.n_sessions == trained.n_sessions + len(sets)
    assert stats.doc_freq[:n].tolist() == [int(trained.doc_freq[i]) + df[i] for i in range(n)]
    gained = Counter(tuple(sorted(s)) for s in sets)
    for key, count in gained.items():
        assert stats.set_counts[key] == trained.set_counts.get(key, 0) + count
    after = _verdicts(artifact, bgl_lines)
    assert [v["key"] for v in after] == [v["key"] for v in before]
    # every window is now part of what "usual" means: most are less surprising (a few lack what is now commoner)
    fell = sum(a["surprise"] < b["surprise"] - 0.05 for a, b in zip(after, before, strict=True))
    assert fell > len(after) // 2
    assert sum(a["surprise"] for a in after) < sum(b["surprise"] for b in before)
    assert Detector.from_pretrained(artifact).stats_.n_sessions == trained.n_sessions  # the trained files: untouched
    assert main(["baseline", "--model", str(artifact), "--list"]) == 0
    assert "(a healthy day)" in capsys.readouterr().out
    assert main(["baseline", "--model", str(artifact), "--undo"]) == 0
    assert not (artifact / BASELINE_NAME).exists()
    assert [v["score"] for v in _verdicts(artifact, bgl_lines)] == [v["score"] for v in before]


def test_after_a_release_rewords_a_message_replace_makes_the_new_wording_the_usual_one(
        artifact, bgl_lines, tmp_path, capsys):
    released = _deploy(bgl_lines)
    first, later = released[:1000], released[1000:]
    plain = _verdicts(artifact, later)
    new_before = sum(any(d["kind"] == "new" and "writing core dump" in d["template"] for d in v["departures"])
                     for v in plain)
    assert new_before >= 5  # the reworded message reads as never seen in many windows
    assert main(["baseline", "--model", str(artifact), _write(tmp_path / "first.log", first), "--replace"]) == 0
    out = capsys.readouterr().out
    assert "the reference shrank from 60 to 50 sessions" in out
    sets, scorer = _sessions(artifact, [])  # the scorer as detect loads it now
    stats, table = scorer.detector.stats_, scorer.detector.templates_
    assert stats.n_sessions == 50
    old = [i for i, t in enumerate(table) if t.startswith("generating core")]
    new = [i for i, t in enumerate(table) if t.startswith("writing core dump")]
    assert old and len(new) == 1 and all(stats.doc_freq[i] == 0 for i in old)  # only the new sessions count
    windows = [first[i:i + 20] for i in range(0, 1000, 20)]
    assert stats.doc_freq[new[0]] == sum(any("writing core dump" in line for line in w) for w in windows)
    after = _verdicts(artifact, later)
    assert not any(d["kind"] == "new" and "writing core dump" in d["template"] for v in after for d in v["departures"])
    assert all(v["new_templates"] == 0 or "writing core dump" not in json.dumps(v) for v in after)
    held = [(a, p) for a, p in zip(after, plain, strict=True) if any("writing core dump" in line for line in
                                                                     later[a["first_line"] - 1: a["last_line"]])]
    assert held and all(a["surprise"] < p["surprise"] for a, p in held)
    assert sum(v["anomalous"] for v in after) < sum(v["anomalous"] for v in plain)
    # the vector came with the baseline: scoring the reworded lines embedded nothing
    scorer = load_scorer(artifact)
    list(detect_stream(scorer, later, StreamLimits(idle_seconds=None)))
    assert scorer.new_templates_embedded == 0


def test_adding_logs_that_lack_an_everyday_template_says_replace_may_fit(artifact, bgl_lines, tmp_path, capsys):
    core = [line for line in bgl_lines if CORE in line][:200]
    rest = [line for line in bgl_lines if CORE not in line][:400]
    assert main(["baseline", "--model", str(artifact), _write(tmp_path / "core.log", core), "--replace"]) == 0
    capsys.readouterr()
    assert main(["baseline", "--model", str(artifact), _write(tmp_path / "rest.log", rest)]) == 0
    out = capsys.readouterr().out
    assert "note: 1 template(s) in most reference sessions are in none of these: 'generating core.<:NUM:>'" in out
    assert "--replace" in out
    batches = load_baseline(artifact)
    assert [b.replace for b in batches] == [True, False] and [b.sessions for b in batches] == [10, 20]
    assert load_scorer(artifact).detector.stats_.n_sessions == 30


def test_a_running_service_applies_a_baseline_at_its_next_request(
        artifact, bgl_lines, tmp_path, caplog):
    from fastapi.testclient import TestClient

    from fusionlog.serving import create_app

    released = _deploy(bgl_lines)
    good = _write(tmp_path / "good.log", released[:1000])
    with TestClient(create_app(load_scorer(artifact))) as client:
        before = client.post("/v1/detect", json={"lines": released[1000:1400]}).json()["verdicts"]
        assert client.get("/healthz").json()["reference_sessions"] == 60
        assert main(["baseline", "--model", str(artifact), good, "--replace"]) == 0
        after = client.post("/v1/detect", json={"lines": released[1000:1400]}).json()["verdicts"]
        health = client.get("/healthz").json()
        assert (health["reference_sessions"], health["baseline_batches"]) == (50, 1)
        assert "\nfusionlog_reference_sessions 50\n" in client.get("/metrics").text
        assert [v["score"] for v in after] != [v["score"] for v in before]
        assert all(v["new_templates"] == 0 for v in after)
        # a file caught mid-edit keeps the baseline in force
        (artifact / BASELINE_NAME).write_text("{", encoding="utf-8")
        again = client.post("/v1/detect", json={"lines": released[1000:1400]}).json()["verdicts"]
        assert [v["score"] for v in again] == [v["score"] for v in after]
        assert "baseline batch(es) read before stay in force" in caplog.text


def test_the_service_takes_known_good_lines_over_http_as_the_command_reads_a_file(
        artifact, bgl_lines, tmp_path):
    """`serve --allow-baseline`: after a release, an operator posts the healthy hour's lines; the batch equals what
    `fusionlog baseline` makes of the same lines in a file, and the next request scores as a fresh load of it."""
    from fastapi.testclient import TestClient

    from fusionlog.errors import ConfigError
    from fusionlog.serving import create_app

    released = _deploy(bgl_lines)
    good, later = released[:1000], released[1000:1400]
    twin = shutil.copytree(artifact, tmp_path / "twin")  # the same artifact, given the same lines by the command
    assert main(["baseline", "--model", str(twin), _write(tmp_path / "good.log", good), "--replace"]) == 0
    with pytest.raises(ConfigError, match="allow_baseline needs a token"):
        create_app(load_scorer(artifact), allow_baseline=True)
    assert main(["serve", "--model", str(artifact), "--allow-baseline", "--port", "0"]) == 2  # refused before loading
    with TestClient(create_app(load_scorer(artifact))) as client:  # off by default; the list is open
        r = client.post("/v1/baseline", json={"lines": good})
        assert r.status_code == 403 and r.json()["error"] == "baseline_disabled"
        assert client.get("/v1/baseline").json() == {"batches": [], "reference_sessions": 60}
    auth = {"Authorization": "Bearer t0k"}
    with TestClient(create_app(load_scorer(artifact), token="t0k", allow_baseline=True)) as client:
        assert client.post("/v1/baseline", json={"lines": good}).status_code == 401
        before = client.post("/v1/detect", json={"lines": later}, headers=auth).json()["verdicts"]
        r = client.post("/v1/baseline", json={"lines": good, "replace": True, "reason": "2.4 rollout",
                                              "source": "web-1 10:00-11:00"}, headers=auth)
        assert r.status_code == 200, r.text
        got = r.json()
        assert (got["sessions"], got["lines"], got["reference_sessions_before"], got["reference_sessions"]) == (
            50, 1000, 60, 50)
        assert got["flagged_after"] < got["flagged_before"] and got["batches"] == 1 and got["replace"] is True
        assert any("shrank from 60 to 50" in n and "without \"replace\"" in n for n in got["notes"])
        (http_batch,), (cli_batch,) = load_baseline(artifact), load_baseline(twin)
        assert (http_batch.source, http_batch.reason) == ("web-1 10:00-11:00", "2.4 rollout")
        assert (http_batch.templates, http_batch.sets, http_batch.sessions) == (
            cli_batch.templates, cli_batch.sets, cli_batch.sessions)
        after = client.post("/v1/detect", json={"lines": later}, headers=auth).json()["verdicts"]
        fresh = _verdicts(twin, later)
        assert [v["score"] for v in after] == pytest.approx([v["score"] for v in fresh], abs=1e-6)
        assert [v["anomalous"] for v in after] == [v["anomalous"] for v in fresh]
        assert sum(v["anomalous"] for v in after) < sum(v["anomalous"] for v in before)
        health = client.get("/healthz", headers=auth).json()
        assert (health["reference_sessions"], health["baseline_batches"], health["allow_baseline"]) == (50, 1, True)
        listed = client.get("/v1/baseline", headers=auth).json()
        assert [(b["sessions"], b["replace"], b["reason"]) for b in listed["batches"]] == [(50, True, "2.4 rollout")]
        # bad input: a clear 4xx, nothing written
        assert client.post("/v1/baseline", json={"lines": []}, headers=auth).status_code == 422
        other = client.post("/v1/baseline", json={"lines": ['{"msg": "started"}'] * 5}, headers=auth)
        assert other.status_code == 422 and "no session read from 5 line(s)" in other.json()["detail"]
        assert client.post("/v1/baseline", json={"lines": good, "replace": "yes"}, headers=auth).status_code == 422
        assert len(load_baseline(artifact)) == 1
        # undone: the trained reference again, scores bit for bit; nothing left to undo is a 409
        r = client.post("/v1/baseline/undo", headers=auth)
        assert r.status_code == 200 and r.json()["batches"] == 0 and r.json()["reference_sessions"] == 60
        assert r.json()["removed"]["source"] == "web-1 10:00-11:00"
        restored = client.post("/v1/detect", json={"lines": later}, headers=auth).json()["verdicts"]
        assert [v["score"] for v in restored] == [v["score"] for v in before]
        r = client.post("/v1/baseline/undo", headers=auth)
        assert r.status_code == 409 and "no baseline batch to undo" in r.json()["detail"]
    assert not (artifact / BASELINE_NAME).exists()


def test_a_live_detect_recounts_a_new_baseline_without_renumbering_its_templates(artifact, bgl_lines, tmp_path):
    """A live detect's open sessions hold template ids, so a baseline written while it runs is counted onto the
    ids in use: a learned text it already mined gets that id's counts, one it has not met yet is counted when
    it is mined. It then scores as a detect started after the baseline does."""
    released = _deploy(bgl_lines)
    limits = StreamLimits(idle_seconds=None)
    mined_first, not_met = load_scorer(artifact), load_scorer(artifact)
    list(detect_stream(mined_first, released[1000:1400], limits))  # mines the reworded message before the baseline
    assert any(t.startswith("writing core dump") for t in
               (mined_first.template(i) for i in range(mined_first.matcher.n_known, mined_first.matcher.n_known
                                                       + mined_first.matcher.n_new)))
    assert main(["baseline", "--model", str(artifact), _write(tmp_path / "good.log", released[:1000])]) == 0
    for live in (mined_first, not_met):
        assert live.refresh_feedback(keep_ids=True) is True
        assert live.detector.stats_.n_sessions == 110
    assert not_met._baseline_pending == {"writing core dump <:NUM:>"}
    fresh = _verdicts(artifact, released[1400:1800])
    got = list(detect_stream(mined_first, released[1400:1800], limits))
    assert [v["surprise"] for v in got] == pytest.approx([v["surprise"] for v in fresh], abs=1e-6)
    assert [v["anomalous"] for v in got] == [v["anomalous"] for v in fresh]
    # not met yet: lacking it costs nothing until the first line of it is mined; from then on, as a fresh start
    fresh = _verdicts(artifact, released[1000:1400])
    got = list(detect_stream(not_met, released[1000:1400], limits))
    first = next(i for i, v in enumerate(got) if any("writing core dump" in line for line in
                                                     released[1000:1400][v["first_line"] - 1: v["last_line"]]))
    assert not not_met._baseline_pending  # met and counted
    assert [v["surprise"] for v in got[first:]] == pytest.approx([v["surprise"] for v in fresh[first:]], abs=1e-6)
    assert all(g["surprise"] <= f["surprise"] + 1e-6 for g, f in zip(got[:first], fresh[:first], strict=True))
    # undone while it runs: the counts go, the ids stay
    assert main(["baseline", "--model", str(artifact), "--undo"]) == 0
    assert mined_first.refresh_feedback(keep_ids=True) is True
    assert mined_first.detector.stats_.n_sessions == 60


def test_a_mute_of_a_template_only_a_baseline_brought_outlives_the_baseline(artifact, bgl_lines, tmp_path):
    released = _deploy(bgl_lines)
    assert main(["baseline", "--model", str(artifact), _write(tmp_path / "good.log", released[:400])]) == 0
    assert main(["mute", "--model", str(artifact), "writing core dump <:NUM:>"]) == 0
    (mute,) = load_mutes(artifact)
    assert mute.vector is not None and len(mute.vector) == load_scorer(artifact).detector.vectors_.shape[1]
    assert main(["baseline", "--model", str(artifact), "--undo"]) == 0
    scorer = load_scorer(artifact)  # no baseline now: the muted template comes from the mute's own vector
    i = scorer.detector.templates_.index("writing core dump <:NUM:>")
    assert i in scorer.muted_ids and scorer.detector.stats_.doc_freq[i] == 0
    assert np.allclose(scorer.detector.vectors_[i], mute.vector)


def test_bad_input_is_a_clear_error_or_a_counted_skip_and_writes_nothing(artifact, bgl_lines, tmp_path, capsys):
    empty = tmp_path / "empty.log"
    empty.write_text("", encoding="utf-8")
    assert main(["baseline", "--model", str(artifact), str(empty)]) == 2
    assert "no session read from 0 line(s)" in capsys.readouterr().err
    other = _write(tmp_path / "app.jsonl", ['{"level": "info", "msg": "started"}'] * 50)
    assert main(["baseline", "--model", str(artifact), other]) == 2
    err = capsys.readouterr().err
    assert "no session read from 50 line(s) (unmatched format 50)" in err and "log format" in err
    mixed = _write(tmp_path / "mixed.log", [*bgl_lines[:40], "", "not a BGL line", "\x00\x01", *bgl_lines[40:60]])
    assert main(["baseline", "--model", str(artifact), mixed]) == 0
    assert "learned 3 sessions (63 lines, 3 skipped: unmatched format 2, empty 1) as normal" in capsys.readouterr().out
    assert main(["baseline", "--model", str(artifact), "--undo"]) == 0
    assert main(["baseline", "--model", str(artifact), str(tmp_path / "missing.log")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (artifact / BASELINE_NAME).exists()
    assert main(["baseline", "--model", str(artifact), "--undo"]) == 2
    assert "no baseline batch to undo" in capsys.readouterr().err
    assert main(["baseline", "--model", str(artifact), "--list", other]) == 2
    assert main(["baseline", "--model", str(artifact)]) == 2
    assert "give the known-good log file(s)" in capsys.readouterr().err
    (artifact / BASELINE_NAME).write_text('{"version": 1, "batches": [{"source": "x"}]}', encoding="utf-8")
    with pytest.raises(ArtifactError, match="baseline.json: unreadable baseline file"):
        load_scorer(artifact)
    assert main(["detect", "--model", str(artifact), "/dev/null"]) == 2
    assert "fix or delete it" in capsys.readouterr().err


def test_detect_says_when_far_more_is_flagged_than_in_its_training_pool(artifact, bgl_lines, tmp_path, caplog):
    """A release that rewords a message floods detect with flags: it says the service may have changed and how
    to teach it the new normal, judged against the share of its own pool the artifact flagged in training."""
    from fusionlog.watch import drift_hint

    released = _write(tmp_path / "released.log", _deploy(bgl_lines))
    report = json.loads((artifact / "report.json").read_text(encoding="utf-8"))

    def detect_with_pool_share(share: float) -> str:
        report["findings"]["flagged_share"] = share
        (artifact / "report.json").write_text(json.dumps(report), encoding="utf-8")
        caplog.clear()
        assert main(["detect", "--model", str(artifact), released, "--anomalies-only", "-o", str(tmp_path / "v")]) == 0
        return caplog.text

    err = detect_with_pool_share(0.2)
    assert "where 20% of the training pool was" in err and "fusionlog baseline --model" in err
    flagged = re.search(r"(\d+) of 100 sessions flagged \((\d+)%\)", err)
    assert flagged and int(flagged.group(1)) > 50
    # the same flood from a detector that flagged most of its own pool is no news
    assert "training pool was" not in detect_with_pool_share(int(flagged.group(1)) / 200 + 0.01)
    assert drift_hint(15, 19, 0.1, "m") is None  # too few sessions to say
    assert drift_hint(40, 100, 0.1, "m") is None  # not most of them
    assert "51 of 100 sessions flagged (51%)" in drift_hint(51, 100, 0.1, "m")
    assert drift_hint(51, 100, None, "m") is None  # an artifact without a report
    assert "--model 'my runs/web' GOOD.log" in drift_hint(51, 100, 0.1, "my runs/web")  # a command to paste


def test_a_live_detect_says_so_when_its_recent_sessions_flood_and_not_again_at_once():
    """`detect --follow` never reaches a closing summary: it judges its last 200 sessions as they come."""
    import logging

    from fusionlog.metrics_file import RECENT_SESSIONS as DRIFT_WINDOW
    from fusionlog.watch import DRIFT_REPEAT_SECONDS, DriftWatch

    said: list[str] = []

    class Log(logging.Logger):
        def warning(self, msg, *args, **kw):
            said.append(msg % args)

    now = [0.0]
    watch = DriftWatch(0.2, "runs/web", Log("t"), clock=lambda: now[0])
    for i in range(DRIFT_WINDOW):  # an ordinary stretch: 10% flagged
        watch.record(i % 10 == 0)
    assert said == []
    for _ in range(DRIFT_WINDOW):  # a release: everything flagged
        watch.record(True)
    assert len(said) == 1 and "sessions flagged" in said[0] and "--model runs/web" in said[0]
    assert said[0].startswith(f"detect: over the last {DRIFT_WINDOW} sessions: ")
    for _ in range(DRIFT_WINDOW):
        watch.record(True)
    assert len(said) == 1  # not again within the repeat time
    now[0] += DRIFT_REPEAT_SECONDS
    for _ in range(50):
        watch.record(True)
    assert len(said) == 2


def test_a_running_service_says_so_when_its_recent_sessions_flood(artifact, bgl_lines, caplog):
    """`serve` never ends with a summary either: it judges the last 200 sessions it scored, as a live detect does."""
    from fastapi.testclient import TestClient

    from fusionlog.serving import create_app

    report = json.loads((artifact / "report.json").read_text(encoding="utf-8"))
    report["findings"]["flagged_share"] = 0.2
    (artifact / "report.json").write_text(json.dumps(report), encoding="utf-8")
    released = _deploy(bgl_lines)
    with TestClient(create_app(load_scorer(artifact))) as client:
        flagged = 0
        for _ in range(2):  # 200 windows of the released service
            flagged += sum(v["anomalous"] for v in client.post("/v1/detect", json={"lines": released}).json()[
                "verdicts"])
    assert flagged > 100
    said = [r.getMessage() for r in caplog.records if "serve: over the last 200 sessions" in r.getMessage()]
    assert len(said) == 1 and "where 20% of the training pool was" in said[0] and "fusionlog baseline" in said[0]
