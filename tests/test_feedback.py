"""An operator mutes templates of a trained detector (`fusionlog mute`); detect and serve stop counting them."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from fusionlog.cli import main
from fusionlog.data import load_dataset
from fusionlog.detector import Detector
from fusionlog.errors import ArtifactError
from fusionlog.feedback import FEEDBACK_NAME, load_mutes
from fusionlog.served import load_scorer
from fusionlog.stream import StreamLimits, detect_stream


@pytest.fixture()
def artifact(bgl_artifact, tmp_path):
    """A copy the test may write its feedback into."""
    return shutil.copytree(bgl_artifact, tmp_path / "det")


def _verdicts(folder, sessions):
    return load_scorer(folder).verdicts([s.key for s in sessions], [list(s.event_ids) for s in sessions])


def test_a_muted_template_stops_counting_in_the_sessions_that_have_it_and_only_there(artifact, data_dir, capsys):
    sessions = load_dataset("bgl", data_dir, progress=False).sessions
    before = _verdicts(artifact, sessions)
    # the operator reads the costliest departure of the most anomalous window and says it is routine
    worst = max(before, key=lambda v: v.score)
    target = next(d for d in worst.departures if d["kind"] == "has")
    assert main(["mute", "--model", str(artifact), target["template"], "--reason", "routine"]) == 0
    assert f"muted {target['template']!r}" in capsys.readouterr().out
    after = _verdicts(artifact, sessions)
    stats = Detector.from_pretrained(artifact).stats_  # the saved files are untouched: the mute is beside them
    cost = float(stats.have_costs([target["event_id"]], in_corpus=False)[0])
    assert cost > 0.05
    has = [target["event_id"] in s.event_ids for s in sessions]
    assert sum(has) >= 1
    for h, b, a in zip(has, before, after, strict=True):
        if h:
            assert a.surprise == pytest.approx(b.surprise - cost, abs=1e-6) and a.score < b.score
            assert target["template"] not in [d["template"] for d in a.departures]
            assert "1 muted template(s) not counted" in a.reason
        else:
            assert (a.score, a.surprise, a.reason) == (b.score, b.surprise, b.reason)
    assert [m.reason for m in load_mutes(artifact)] == ["routine"]
    assert main(["mute", "--model", str(artifact), "--list"]) == 0
    assert target["template"] in capsys.readouterr().out
    # undo: the scores are the trained detector's again
    assert main(["mute", "--model", str(artifact), "--undo", str(target["event_id"])]) == 0
    assert [v.score for v in _verdicts(artifact, sessions)] == [v.score for v in before]
    assert load_mutes(artifact) == []


def test_a_line_the_detector_never_saw_can_be_muted_and_then_reads_as_known(artifact, data_dir):
    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:20]
    odd = lines[3].split(" RAS ")[0] + " RAS KERNEL INFO frobnicator restarted on port 4242"
    limits = StreamLimits(idle_seconds=None)

    def first_window(folder, window):
        scorer = load_scorer(folder)
        return next(iter(detect_stream(scorer, window, limits))), scorer

    plain, _ = first_window(artifact, lines)
    flagged, _ = first_window(artifact, [*lines[:5], odd, *lines[5:]])
    assert flagged["departures"][0]["kind"] == "new" and flagged["new_templates"] == 1
    assert main(["mute", "--model", str(artifact), "--line", odd]) == 0
    # another port: the same template, now known to the matcher and free to have
    again = odd.replace("4242", "5151")
    muted, scorer = first_window(artifact, [*lines[:5], again, *lines[5:]])
    from fastapi.testclient import TestClient

    from fusionlog.serving import create_app

    with TestClient(create_app(scorer)) as client:  # what a running service has loaded
        assert client.get("/healthz").json()["muted_templates"] == ["frobnicator restarted on port <:NUM:>"]
    assert muted["new_templates"] == 0 and scorer.new_templates_embedded == 0  # its vector came with the mute
    assert muted["surprise"] == pytest.approx(plain["surprise"], abs=1e-3)
    assert "frobnicator" not in json.dumps(muted["departures"]) and "1 muted template(s)" in muted["reason"]
    def absent(reason: str) -> int:  # a muted template is not reported as one absent from the pool
        found = re.search(r"(\d+) template\(s\) absent from the adaptation pool", reason)
        return int(found.group(1)) if found else 0

    assert absent(muted["reason"]) == absent(plain["reason"])
    assert abs(muted["score"] - plain["score"]) < abs(flagged["score"] - plain["score"])


def test_bad_feedback_and_bad_requests_are_clear_errors(artifact, capsys):
    assert main(["mute", "--model", str(artifact), "--undo", "0"]) == 2
    assert "is not muted" in capsys.readouterr().err
    assert main(["mute", "--model", str(artifact), "999999"]) == 2
    assert "not in the detector's table" in capsys.readouterr().err
    assert main(["mute", "--model", str(artifact), "--line", "java.io.IOException: reset"]) == 2
    assert "give its text without --line" in capsys.readouterr().err
    assert main(["mute", "--model", str(artifact.parent), "--list"]) == 2
    assert "not a detector folder" in capsys.readouterr().err
    (artifact / FEEDBACK_NAME).write_text('{"version": 1, "muted": [{"reason": "no template"}]}', encoding="utf-8")
    with pytest.raises(ArtifactError, match="feedback.json: unreadable feedback file"):
        load_scorer(artifact)
    assert main(["detect", "--model", str(artifact), "/dev/null"]) == 2
    assert "fix or delete it" in capsys.readouterr().err
    # the trained files never read the feedback: `fuse --resume` and the harness still load them
    saved = json.loads((artifact / "templates.json").read_text(encoding="utf-8"))["templates"]
    assert Detector.from_pretrained(artifact).templates_ == saved


def test_a_number_names_an_event_id_of_the_table_or_is_refused(artifact):
    """A 4400-digit number used to be a 500 (int() refuses over 4300 digits) and "-1" muted `<:NUM:>`, the template
    of every number: both are ids outside the table now, a 422 that writes nothing."""
    from fastapi.testclient import TestClient

    from fusionlog.serving import create_app

    auth = {"Authorization": "Bearer t0k"}
    with TestClient(create_app(load_scorer(artifact), token="t0k", allow_mute=True)) as client:
        for text in ("9" * 4400, "-1", "-0", "99999999999999999999"):
            r = client.post("/v1/mute", json={"template": text}, headers=auth)
            assert r.status_code == 422 and "not in the detector's table" in r.json()["detail"], (text[:30], r.text)
        assert load_mutes(artifact) == []
        r = client.post("/v1/mute", json={"template": "007"}, headers=auth)  # leading zeros: still the id
        assert r.status_code == 200 and r.json()["event_id"] == 7


def test_a_running_service_applies_a_mute_at_its_next_request(artifact, data_dir, caplog):
    """`serve` keeps no session between requests, so it re-reads feedback.json when it changes: no restart."""
    from fastapi.testclient import TestClient

    from fusionlog.serving import create_app

    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:200]
    with TestClient(create_app(load_scorer(artifact))) as client:
        before = client.post("/v1/detect", json={"lines": lines}).json()["verdicts"]
        worst = max(before, key=lambda v: v["score"])
        target = next(d for d in worst["departures"] if d["kind"] == "has")
        assert main(["mute", "--model", str(artifact), target["template"]]) == 0
        after = client.post("/v1/detect", json={"lines": lines}).json()["verdicts"]
        assert client.get("/healthz").json()["muted_templates"] == [target["template"]]
        assert "\nfusionlog_muted_templates 1\n" in client.get("/metrics").text
        changed = [a for b, a in zip(before, after, strict=True) if a["score"] != b["score"]]
        assert changed and all("1 muted template(s) not counted" in a["reason"] for a in changed)
        assert next(a for a in after if a["key"] == worst["key"])["score"] < worst["score"]
        # a file caught mid-edit keeps the mute in force
        (artifact / FEEDBACK_NAME).write_text("{", encoding="utf-8")
        again = client.post("/v1/detect", json={"lines": lines}).json()["verdicts"]
        assert [v["score"] for v in again] == [v["score"] for v in after]
        assert "stay in force" in caplog.text
        (artifact / FEEDBACK_NAME).unlink()  # unmuted by deleting the file
        assert [v["score"] for v in client.post("/v1/detect", json={"lines": lines}).json()["verdicts"]] == [
            v["score"] for v in before]


def test_a_mute_names_templates_by_text_so_every_id_with_that_text_is_muted(artifact):
    """Mutes outlive the ids (a re-fuse renumbers templates); two ids that read alike are both muted."""
    from fusionlog.feedback import Mute, apply_mutes

    det = Detector.from_pretrained(artifact)
    det.templates_ = [*det.templates_[:-1], det.templates_[0]]  # the last id now reads as the first
    muted = apply_mutes(det, [Mute(det.templates_[0])])
    last = len(det.templates_) - 1
    assert muted == {0, last} and det.stats_.have_weights[[0, last]].tolist() == [0.0, 0.0]
    assert det.stats_.have_weights[1:last].min() > 0


def test_the_service_takes_mutes_over_http_only_when_allowed_and_with_a_token(artifact, data_dir):
    """`serve --allow-mute`: an alert's "this is normal" button posts the template; the next request counts it 0."""
    from fastapi.testclient import TestClient

    from fusionlog.errors import ConfigError
    from fusionlog.serving import create_app

    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:200]
    with pytest.raises(ConfigError, match="allow_mute needs a token"):
        create_app(load_scorer(artifact), allow_mute=True)
    assert main(["serve", "--model", str(artifact), "--allow-mute", "--port", "0"]) == 2  # refused before loading
    with TestClient(create_app(load_scorer(artifact))) as client:  # off by default
        r = client.post("/v1/mute", json={"template": "0"})
        assert r.status_code == 403 and r.json()["error"] == "mute_disabled"
    auth = {"Authorization": "Bearer t0k"}
    with TestClient(create_app(load_scorer(artifact), token="t0k", allow_mute=True)) as client:
        assert client.post("/v1/mute", json={"template": "0"}).status_code == 401
        for body in ({"template": "0", "line": "yes"}, {"template": "0", "when": "now"}):  # strict, as every body
            r = client.post("/v1/mute", json=body, headers=auth)
            assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
        assert client.get("/healthz", headers=auth).json()["allow_mute"] is True
        before = client.post("/v1/detect", json={"lines": lines}, headers=auth).json()["verdicts"]
        worst = max(before, key=lambda v: v["score"])
        target = next(d for d in worst["departures"] if d["kind"] == "has")
        r = client.post("/v1/mute", json={"template": target["template"], "reason": "routine"}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json() == {"template": target["template"], "event_id": target["event_id"], "changed": True,
                            "muted_templates": [target["template"]]}
        after = client.post("/v1/detect", json={"lines": lines}, headers=auth).json()["verdicts"]
        assert next(v for v in after if v["key"] == worst["key"])["score"] < worst["score"]
        assert [m.reason for m in load_mutes(artifact)] == ["routine"]  # the same file `fusionlog mute` writes
        again = client.post("/v1/mute", json={"template": str(target["event_id"])}, headers=auth).json()
        assert again["changed"] is False
        # a line the model never saw, muted by the raw line: embedded once, then read as known
        odd = lines[3].split(" RAS ")[0] + " RAS KERNEL INFO frobnicator restarted on port 4242"
        r = client.post("/v1/mute", json={"template": odd, "line": True}, headers=auth).json()
        assert r["event_id"] is None and r["template"] == "frobnicator restarted on port <:NUM:>"
        v = client.post("/v1/detect", json={"lines": [*lines[:5], odd.replace("4242", "7"), *lines[5:20]]},
                        headers=auth).json()["verdicts"][0]
        assert v["new_templates"] == 0 and "1 muted template(s) not counted" in v["reason"]
        bad = client.post("/v1/unmute", json={"template": "no such template at all"}, headers=auth)
        assert bad.status_code == 422 and "is not muted" in bad.json()["detail"]
        assert client.post("/v1/mute", json={"template": ""}, headers=auth).status_code == 422
        assert client.post("/v1/unmute", json={"template": target["template"]}, headers=auth).status_code == 200
        restored = client.post("/v1/detect", json={"lines": lines}, headers=auth).json()["verdicts"]
        assert [v["score"] for v in restored] == [v["score"] for v in before]


def test_a_live_detect_applies_mutes_without_renumbering_its_open_sessions(artifact, data_dir):
    """`detect --follow`: a mute written while it runs counts from the next heartbeat, for table templates and
    for one this detect mined itself (its id kept: open sessions hold it); what was scored before stays."""
    from fusionlog.commands.detect import follow_feedback

    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:400]
    odd = lines[3].split(" RAS ")[0] + " RAS KERNEL INFO frobnicator restarted on port 4242"
    stream = [*lines[:45], odd, *lines[45:245], odd.replace("4242", "7"), *lines[245:]]  # lines 46 and 247
    limits = StreamLimits(idle_seconds=None)

    def start(key: str) -> int:  # "lines:N": the window's first line
        return int(key.split(":")[1])

    plain = {v["key"]: v for v in detect_stream(load_scorer(artifact), stream, limits, batch_size=1)}
    worst = max((v for k, v in plain.items() if start(k) >= 201), key=lambda v: v["score"])
    target = next(d for d in worst["departures"] if d["kind"] == "has")
    scorer = load_scorer(artifact)

    def feed():
        for i, line in enumerate(stream):
            if i == 200:  # the operator mutes while detect runs: a table template and the mined one
                assert main(["mute", "--model", str(artifact), target["template"]]) == 0
                assert main(["mute", "--model", str(artifact), "--line", odd]) == 0
                yield None  # a heartbeat
            yield line

    live = {v["key"]: v for v in detect_stream(scorer, follow_feedback(feed(), scorer), limits, batch_size=1)}
    assert set(live) == set(plain) and scorer.new_templates_embedded == 1  # mined once, id and vector kept
    early = [k for k in plain if start(k) < 181]  # windows finished and scored before the mute
    assert len(early) == 9 and all(live[k] == plain[k] for k in early)
    first_odd, second_odd = plain["lines:41"], plain["lines:241"]
    assert first_odd["departures"][0]["kind"] == second_odd["departures"][0]["kind"] == "new"
    assert live[first_odd["key"]] == first_odd  # scored before the mute
    assert live["lines:241"]["surprise"] == pytest.approx(second_odd["surprise"] - 1.0, abs=1e-3)
    assert "muted template(s) not counted" in live["lines:241"]["reason"]
    assert live[worst["key"]]["score"] < worst["score"]


def test_a_template_of_only_wildcards_is_not_muted(artifact, capsys):
    """Muted, `<*>` matched every message the detector had not seen, each then costing nothing."""
    for text in ("<*>", "<*> <:*:>"):
        assert main(["mute", "--model", str(artifact), text]) == 2
        assert "only wildcards" in capsys.readouterr().err
    assert load_mutes(artifact) == []
    assert main(["mute", "--model", str(artifact), "frobnicator restarted on port 80"]) == 0  # words: muted
    assert len(load_mutes(artifact)) == 1
