"""`POST /v1/ingest`: a log shipper's batches, whose sessions stay open across requests (`fusionlog.ingest`)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fusionlog.cli import main
from fusionlog.config import SessionRule
from fusionlog.data.readers import iter_lines
from fusionlog.data.registry import INSTANCE_KEY, LOGHUB_FORMATS
from fusionlog.ingest import IngestConfig, record_line
from fusionlog.served import load_scorer
from fusionlog.serving import create_app
from fusionlog.stream import StreamLimits, detect_stream
from tests.test_serving import LinearTestScorer

QUIET = IngestConfig(idle_seconds=None, wall_idle_seconds=None)  # sessions close only as /v1/detect's would


class OpenStackTestScorer(LinearTestScorer):
    """test_serving's small real scorer, reading OpenStack's nova lines by instance (sessions of many lines)."""

    def __init__(self, templates: list[str], embedder, threshold: float = 0.5) -> None:
        super().__init__(templates, embedder, threshold)
        self.rule = SessionRule("key", key_pattern=INSTANCE_KEY)
        self.log_format = LOGHUB_FORMATS["OpenStack"]


@pytest.fixture(scope="module")
def os_lines(data_dir) -> list[str]:
    return [line for _, line in iter_lines(data_dir / "loghub2k/OpenStack/OpenStack_2k.log")][:600]


@pytest.fixture(scope="module")
def make_scorer(data_dir, embedder):
    from fusionlog.data.registry import load_dataset

    templates = load_dataset("openstack-2k", data_dir, progress=False).store.templates
    lines = [line for _, line in iter_lines(data_dir / "loghub2k/OpenStack/OpenStack_2k.log")][:600]
    scores = [v["score"] for v in detect_stream(OpenStackTestScorer(templates, embedder), lines,
                                                StreamLimits(idle_seconds=None))]
    threshold = sorted(scores)[len(scores) // 2]  # label-free: about half the instances above it
    return lambda: OpenStackTestScorer(templates, embedder, threshold)  # a fresh parser per app


def _instances(lines: list[str]) -> set[str]:
    import re

    return {m.group(1) for line in lines for m in re.finditer(INSTANCE_KEY, line)}


def test_a_shippers_batches_make_the_sessions_one_request_would(os_lines, make_scorer):
    """Cut into posts of 97 lines (as a shipper batches by size), /v1/detect scores an instance in pieces; /v1/ingest
    keeps its sessions open across the posts, so after a flush it has scored exactly the sessions, and scores,
    of one request holding every line, whichever framing each post used."""
    with TestClient(create_app(make_scorer())) as client:
        whole = client.post("/v1/detect", json={"lines": os_lines}).json()["verdicts"]
    posts = [os_lines[i:i + 97] for i in range(0, len(os_lines), 97)]
    with TestClient(create_app(make_scorer())) as client:
        pieces = [v for part in posts for v in client.post("/v1/detect", json={"lines": part}).json()["verdicts"]]
    assert len(pieces) > len(whole)  # what a shipper gets from /v1/detect: pieces of instances, scored alone
    got = []
    with TestClient(create_app(make_scorer(), ingest=QUIET)) as client:
        for i, part in enumerate(posts):
            framing = i % 4
            if framing == 0:  # ours
                r = client.post("/v1/ingest", json={"lines": part})
            elif framing == 1:  # Fluent Bit's http output, format json: an array of records, the line in `log`
                r = client.post("/v1/ingest", json=[{"date": 1.0, "log": line + "\n"} for line in part])
            elif framing == 2:  # Vector's http sink, newline-delimited JSON: a record per line, in `message`
                r = client.post("/v1/ingest", content="\n".join(json.dumps({"message": line}) for line in part),
                                headers={"Content-Type": "application/x-ndjson"})
            else:  # curl --data-binary @part.log
                r = client.post("/v1/ingest", content="\n".join(part) + "\n", headers={"Content-Type": "text/plain"})
            assert r.status_code == 200, r.text
            assert r.json()["stats"]["lines"] == len(part) and r.json()["stream"] == "default"
            got += r.json()["verdicts"]
        assert client.get("/healthz").json()["ingest"]["open_sessions"] == len(whole) - len(got) > 0
        got += client.post("/v1/ingest/flush").json()["verdicts"]
        assert client.get("/healthz").json()["ingest"] == {"streams": 0, "open_sessions": 0, "verdicts_file": None,
                                                           "wall_idle_seconds": None, "journal": None}
    assert sorted((v["key"], v["score"], v["events"]) for v in got) == sorted(
        (v["key"], v["score"], v["events"]) for v in whole)


def test_every_verdict_reaches_the_file_and_the_log_and_nothing_open_is_lost_at_shutdown(
        os_lines, make_scorer, tmp_path, caplog):
    path = tmp_path / "verdicts.jsonl"
    cfg = IngestConfig(verdicts_path=str(path), idle_seconds=None, wall_idle_seconds=None)
    part = os_lines[:300]
    with TestClient(create_app(make_scorer(), ingest=cfg)) as client:
        a = client.post("/v1/ingest?stream=pod-a", json={"lines": part}).json()
        b = client.post("/v1/ingest", json={"lines": part, "stream": "pod-b"}).json()
        health = client.get("/healthz").json()["ingest"]
        assert (health["streams"], health["open_sessions"]) == (2, a["open_sessions"] + b["open_sessions"])
        assert "\nfusionlog_ingest_streams 2\n" in client.get("/metrics").text
        assert not path.exists() or not path.read_text()  # no instance closes before its stream ends
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    # the same instances in two streams are two sessions each, kept apart; closed by the shutdown, none lost
    assert Counter(r["stream"] for r in rows) == {"pod-a": len(_instances(part)), "pod-b": len(_instances(part))}
    assert {r["closed_by"] for r in rows} == {"flush"}
    flagged = [r for r in rows if r["anomalous"]]
    assert flagged and caplog.text.count("anomalous session ") == len(flagged)


def test_a_stream_that_goes_quiet_gets_its_verdicts_from_the_background_timeout(os_lines, make_scorer, tmp_path):
    path = tmp_path / "flagged.jsonl"
    cfg = IngestConfig(verdicts_path=str(path), anomalies_only=True, idle_seconds=None, wall_idle_seconds=0.3)
    part = os_lines[:120]
    with TestClient(create_app(make_scorer(), ingest=cfg, poll_seconds=0.05)) as client:
        r = client.post("/v1/ingest", json={"lines": part}).json()
        assert r["open_sessions"] == len(_instances(part)) and not r["verdicts"]
        deadline = time.monotonic() + 20
        while client.get("/healthz").json()["ingest"]["open_sessions"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/healthz").json()["ingest"]["open_sessions"] == 0
        text = client.get("/metrics").text
        assert f"\nfusionlog_sessions_scored_total {len(_instances(part))}\n" in text
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows and all(r["anomalous"] and r["closed_by"] == "wall_idle" for r in rows)  # only the flagged


def test_bad_posts_are_clear_errors_and_counted_skips(os_lines, make_scorer):
    with TestClient(create_app(make_scorer(), max_lines=200, ingest=IngestConfig(max_streams=2))) as client:
        def post(**kw):
            return client.post("/v1/ingest", **kw)

        assert post(json={"lines": ["x"], "stream": "a b"}).status_code == 422
        r = post(json={"lines": ["x"], "stream": "a"}, params={"stream": "b"})
        assert r.status_code == 422 and "give one" in r.json()["detail"]
        r = post(json=[{"level": "info", "text": "no line field"}])
        assert r.status_code == 422 and "log, message, msg, line" in r.json()["detail"]
        assert post(json=[3]).status_code == 422
        assert post(content="{oops", headers={"Content-Type": "application/json"}).status_code == 400
        r = post(content='{"log": "a"}\nnot json\n', headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 400 and "line 2" in r.json()["detail"]
        assert post(content=b"\xff\xfe{}", headers={"Content-Type": "application/json"}).status_code == 400
        assert post(json={"lines": os_lines[:201]}).status_code == 413
        # plain text: bad bytes replaced and counted, lines of another format counted as skipped
        body = ("\n".join(os_lines[:5]) + "\nnot a nova line\n").encode() + b"\xff\xfe bad bytes\n"
        r = post(content=body, headers={"Content-Type": "text/plain"})
        assert r.status_code == 200
        assert r.json()["stats"]["decode_errors"] == 1 and r.json()["stats"]["unmatched_format"] == 2
        keyed = [line for line in os_lines if "[instance: " in line][:5]
        assert post(json={"lines": keyed}).status_code == 200  # "default" holds sessions (else "three" takes it)
        assert post(json={"lines": keyed, "stream": "two"}).status_code == 200
        r = post(json={"lines": keyed, "stream": "three"})
        assert r.status_code == 503 and r.json()["error"] == "too_many_streams" and "the limit" in r.json()["detail"]
        r = client.post("/v1/ingest/flush", params={"stream": "nope"})
        assert r.status_code == 422 and "no open stream 'nope'" in r.json()["detail"]
        flushed = client.post("/v1/ingest/flush", params={"stream": "two"}).json()
        assert flushed["stats"]["sessions"] == len(_instances(keyed)) >= 1
        assert post(json={"lines": keyed, "stream": "three"}).status_code == 200  # room again
        # an empty ?stream= is the default stream on both endpoints (the flush said "no open stream ''")
        r = client.post("/v1/ingest/flush", params={"stream": ""})
        assert r.status_code == 200 and r.json()["stream"] == "default" and r.json()["stats"]["sessions"] >= 1


def test_a_lone_surrogate_in_a_post_is_replaced_and_its_sessions_verdicts_are_kept(os_lines, make_scorer,
                                                                                     tmp_path):
    """A lone surrogate escape used to pass the JSON reader and fail at the first UTF-8 write: the post that closed
    its session got a 500 after its lines were taken (a shipper's retry duplicates them), and a background close
    lost the verdict. It becomes U+FFFD, counted in decode_errors, and every verdict is written."""
    path = tmp_path / "verdicts.jsonl"
    keyed = [line for line in os_lines if "[instance: " in line][:6]
    broken = [keyed[0].replace("[instance: ", "[instance: \ud800", 1), keyed[1] + " \udc80"]
    cfg = IngestConfig(verdicts_path=str(path), idle_seconds=None, wall_idle_seconds=0.3)
    with TestClient(create_app(make_scorer(), ingest=cfg, poll_seconds=0.05)) as client:
        r = client.post("/v1/ingest?stream=a", content=json.dumps({"lines": broken + keyed[2:]}),
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["stats"]["decode_errors"] == 2
        r = client.post("/v1/ingest?stream=b", content="\n".join(json.dumps({"log": x}) for x in broken),
                        headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 200 and r.json()["stats"]["decode_errors"] == 2
        deadline = time.monotonic() + 20  # the background close scores and writes them
        while client.get("/healthz").json()["ingest"]["open_sessions"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/healthz").json()["ingest"]["open_sessions"] == 0
        r = client.post("/v1/ingest?stream=c", content=json.dumps({"lines": broken}),
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 200
        r = client.post("/v1/ingest/flush?stream=c")  # the post that closes them answers too
        assert r.status_code == 200 and r.json()["stats"]["sessions"] >= 1
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert {r["stream"] for r in rows} == {"a", "b", "c"}


def test_a_stream_holding_nothing_makes_room_for_a_new_one_at_the_cap(os_lines, make_scorer, tmp_path):
    """Stream names come from whoever posts (pods come and go): once --max-streams names were used, even by an
    empty post, every new one was refused for good. A stream with no open session is dropped for a new one now
    (its journal too: nothing in it to replay); only streams that all hold sessions refuse one, with a 503."""
    from fusionlog.journal import journals

    keyed = [line for line in os_lines if "[instance: " in line][:5]
    cfg = IngestConfig(max_streams=2, idle_seconds=None, wall_idle_seconds=None, journal_dir=str(tmp_path))
    with TestClient(create_app(make_scorer(), ingest=cfg)) as client:
        def post(stream, lines):
            return client.post("/v1/ingest", params={"stream": stream}, json={"lines": lines})

        assert post("a", []).status_code == post("b", []).status_code == 200
        assert post("c", keyed).status_code == 200  # a held nothing: dropped
        assert post("d", keyed).status_code == 200  # b too
        assert client.get("/healthz").json()["ingest"]["streams"] == 2
        assert len(list(journals(tmp_path))) == 2
        r = post("e", keyed)  # c and d hold open sessions
        assert r.status_code == 503 and r.json()["error"] == "too_many_streams"
        flushed = client.post("/v1/ingest/flush", params={"stream": "c"}).json()
        assert flushed["stats"]["sessions"] >= 1  # nothing of c was lost on the way
        assert post("e", keyed).status_code == 200


def test_records_become_the_line_the_model_reads():
    assert record_line({"log": "INFO up\n", "stream": "stdout"}, False, "x") == "INFO up"
    assert record_line({"message": "INFO up", "host": "web-1"}, False, "x") == "INFO up"
    with pytest.raises(Exception, match="looked for in the fields"):
        record_line({"text": "INFO up"}, False, "x")
    # a JSON-lines model: the record itself, or the JSON object text Docker's json-file keeps in `log`
    assert json.loads(record_line({"msg": "up", "level": "info"}, True, "x")) == {"msg": "up", "level": "info"}
    assert record_line({"log": '{"msg": "up"}\n', "stream": "stdout"}, True, "x") == '{"msg": "up"}'


def test_a_mute_applied_while_a_stream_holds_open_sessions_keeps_their_template_ids(bgl_artifact, data_dir,
                                                                                   tmp_path):
    """The service reloads a changed feedback.json at the next request; with ingest sessions open it must keep
    the template ids they hold (as a live detect does): here the open window holds a message mined at detection
    time, and the mute of another never-seen line takes the next id in a fresh load. The window finished after
    the mute scores as a detect started after it."""
    artifact = shutil.copytree(bgl_artifact, tmp_path / "det")
    bgl = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:40]
    lines = [line.replace("generating core.", "writing core dump ") for line in bgl]  # a release's new wording
    assert any("writing core dump" in line for line in lines[20:30]) and any("writing core" in x for x in lines[30:])
    odd = bgl[3].split(" RAS ")[0] + " RAS KERNEL INFO frobnicator restarted on port 4242"
    with TestClient(create_app(load_scorer(artifact), ingest=QUIET)) as client:
        first = client.post("/v1/ingest", json={"lines": lines[:30]}).json()
        assert len(first["verdicts"]) == 1 and first["open_sessions"] == 1  # window 2 is half read
        assert main(["mute", "--model", str(artifact), "--line", odd]) == 0
        second = client.post("/v1/ingest", json={"lines": lines[30:]}).json()["verdicts"]
        second += client.post("/v1/ingest/flush").json()["verdicts"]
    fresh = list(detect_stream(load_scorer(artifact), lines, StreamLimits(idle_seconds=None)))
    assert len(second) == 1 and second[0]["new_templates"] == fresh[1]["new_templates"] >= 1
    assert second[0]["surprise"] == pytest.approx(fresh[1]["surprise"], abs=1e-6)
    assert second[0]["score"] == pytest.approx(fresh[1]["score"], abs=1e-6)
    # the GRU read the same templates (with the ids renumbered it read the muted line where the new wording was)
    assert [(t["template"], t["attention"]) for t in second[0]["top_templates"]] == [
        (t["template"], t["attention"]) for t in fresh[1]["top_templates"]]
    assert [d["template"] for d in second[0]["departures"]] == [d["template"] for d in fresh[1]["departures"]]


def test_a_stream_of_another_systems_lines_is_named_in_one_warning(os_lines, make_scorer, caplog):
    """Posting the wrong pod's logs is no error (each line is a counted skip), so nothing would ever be said: after
    its first 1,000 lines with no event the stream is named once, with what the detector reads."""
    from fusionlog.watch import FIT_CHECK_LINES

    other = [f'{{"level": "info", "msg": "request {i} served"}}' for i in range(FIT_CHECK_LINES + 200)]
    with TestClient(create_app(make_scorer(), ingest=QUIET)) as client:
        for i in range(0, len(other), 300):
            assert client.post("/v1/ingest?stream=web-2", json={"lines": other[i:i + 300]}).status_code == 200
        client.post("/v1/ingest?stream=nova", json={"lines": os_lines})
    said = [r.getMessage() for r in caplog.records if "gave this detector an event" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("ingest stream 'web-2': none of the 1200 lines")
    assert "unmatched format 1200" in said[0] and "log format" in said[0]


def test_a_trace_cut_from_its_record_by_a_post_still_joins_the_records_session(os_lines, make_scorer):
    """A Python service's traceback after its record: the shipper's batch ends after the record, the next begins
    with the frames. In a stream the exception line is still an event of the record's instance; `/v1/detect`
    scoring each post alone cannot place it."""
    record = next(line for line in os_lines if "[instance: " in line)
    key = next(iter(_instances([record])))
    trace = ["Traceback (most recent call last):", '  File "nova/compute/manager.py", line 1, in spawn',
             "    raise ValueError('disk image corrupt')", "ValueError: disk image corrupt"]
    with TestClient(create_app(make_scorer(), ingest=QUIET)) as client:
        client.post("/v1/ingest", json={"lines": [record]})
        stats = client.post("/v1/ingest", json={"lines": trace}).json()["stats"]
        (v,) = client.post("/v1/ingest/flush").json()["verdicts"]
        assert stats["exception_lines"] == 1 and v["key"] == key and v["events"] == 2
        assert any("ValueError: disk image corrupt" in t["template"] for t in v["top_templates"])
        alone = client.post("/v1/detect", json={"lines": trace}).json()
        assert alone["verdicts"] == [] and alone["stats"]["exception_lines"] == 0


def test_a_flood_of_anomalies_is_logged_one_by_one_up_to_a_cap_then_counted(tmp_path, caplog):
    """A release can flag every session; the log names 20 a minute and counts the rest, the file keeps all."""
    from fusionlog.ingest import WARNINGS_PER_MINUTE, VerdictSink

    now = [0.0]
    path = tmp_path / "v.jsonl"
    sink = VerdictSink(IngestConfig(verdicts_path=str(path)), clock=lambda: now[0])
    flood = [{"key": f"k{i}", "score": 0.9, "anomalous": True, "departures": []}
             for i in range(WARNINGS_PER_MINUTE + 10)]
    sink.take("web", flood)
    assert caplog.text.count("anomalous session ") == WARNINGS_PER_MINUTE
    now[0] += 61
    sink.take("web", [{"key": "late", "score": 0.9, "anomalous": True, "departures": []}])
    sink.close()
    assert "10 more anomalous session(s) in the last minute not logged one by one (all in" in caplog.text
    assert "anomalous session late (stream web" in caplog.text
    assert len(path.read_text(encoding="utf-8").splitlines()) == WARNINGS_PER_MINUTE + 11


def test_compressed_and_back_to_back_json_bodies_as_shippers_send_them(os_lines, make_scorer):
    """Fluent Bit (`compress gzip`, `format json_stream` or `json_lines`) and Vector (`compression = "gzip"`) send
    compressed batches; a compressed body is capped by what it holds, not by its size on the wire."""
    import gzip
    import zlib

    records = [{"date": 1.0, "log": line} for line in os_lines[:200]]
    stream = "".join(json.dumps(r) for r in records).encode()  # json_stream: objects back to back
    with TestClient(create_app(make_scorer(), max_body_bytes=256 * 1024, ingest=QUIET)) as client:
        plain = client.post("/v1/ingest?stream=a", content=stream, headers={"Content-Type": "application/json"})
        zipped = client.post("/v1/ingest?stream=b", content=gzip.compress(stream),
                             headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert plain.status_code == zipped.status_code == 200, zipped.text
        assert zipped.json()["stats"] == {**plain.json()["stats"], "elapsed_ms": zipped.json()["stats"]["elapsed_ms"]}
        assert zipped.json()["stats"]["lines"] == 200
        deflated = client.post("/v1/detect", content=zlib.compress(json.dumps({"lines": os_lines[:50]}).encode()),
                               headers={"Content-Encoding": "deflate"})
        assert deflated.status_code == 200 and deflated.json()["stats"]["lines"] == 50
        bomb = gzip.compress(json.dumps({"lines": ["x" * 1000] * 1000}).encode())  # 1 MB in a few KB
        assert len(bomb) < 256 * 1024
        r = client.post("/v1/ingest", content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and "holds over" in r.json()["detail"]
        r = client.post("/v1/ingest", content=b"not gzip at all", headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and r.json()["error"] == "bad_encoding"
        r = client.post("/v1/ingest", content=gzip.compress(stream)[:100], headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and "ends early" in r.json()["detail"]
        r = client.post("/v1/ingest", content=stream, headers={"Content-Encoding": "br"})
        assert r.status_code == 415


def test_every_gzip_member_is_read_and_junk_after_the_data_is_refused(os_lines, make_scorer):
    """gzip(a) + gzip(b) is one valid gzip body (RFC 1952) whose second half used to be dropped silently; each member
    is read now under the same cap, and bytes after the data that are no member are a 400, not lost lines."""
    import gzip
    import zlib

    lines = [json.dumps({"log": line}) for line in os_lines[:6]]
    a, b = ("\n".join(lines[:3]) + "\n").encode(), ("\n".join(lines[3:]) + "\n").encode()
    gz = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    with TestClient(create_app(make_scorer(), max_body_bytes=64 * 1024, ingest=QUIET)) as client:
        r = client.post("/v1/ingest?stream=a", content=gzip.compress(a) + gzip.compress(b), headers=gz)
        assert r.status_code == 200 and r.json()["stats"]["lines"] == 6, r.text
        r = client.post("/v1/ingest?stream=a", content=gzip.compress(a) + b"junk", headers=gz)
        assert r.status_code == 400 and "junk" in r.json()["detail"]
        r = client.post("/v1/ingest?stream=a", content=zlib.compress(a) + b"\0", headers={**gz,
                        "Content-Encoding": "deflate"})
        assert r.status_code == 400 and "junk" in r.json()["detail"]
        r = client.post("/v1/ingest?stream=a", content=gzip.compress(a) + gzip.compress(b)[:20], headers=gz)
        assert r.status_code == 400 and "ends early" in r.json()["detail"]
        half = ("x" * 40_000).encode()  # each member under the cap, both together over it
        r = client.post("/v1/ingest?stream=a", content=gzip.compress(half) + gzip.compress(half), headers=gz)
        assert r.status_code == 413 and "holds over 65536 bytes" in r.json()["detail"]


def test_ingest_verdicts_can_name_the_raw_line_behind_each_template(os_lines, make_scorer):
    """`serve --examples`: what an SRE greps for next, numbered by the stream's lines across posts."""
    cfg = IngestConfig(idle_seconds=None, wall_idle_seconds=None, examples=True)
    with TestClient(create_app(make_scorer(), ingest=cfg)) as client:
        for i in range(0, len(os_lines), 97):
            client.post("/v1/ingest", json={"lines": os_lines[i:i + 97]})
        verdicts = client.post("/v1/ingest/flush").json()["verdicts"]
    shown = [t["example"] for v in verdicts for t in v["top_templates"]]
    assert verdicts and len(shown) == sum(len(v["top_templates"]) for v in verdicts)
    assert all(os_lines[ex["line"] - 1].strip().startswith(ex["text"]) for ex in shown)
    assert max(ex["line"] for ex in shown) > 97  # numbered across posts, not per request


def test_a_torn_last_line_is_cut_before_appending(tmp_path, caplog):
    """What a killed writer leaves at the end of a JSONL file (a line without its newline) is cut, however long,
    so the next line is not glued to it; a whole file, an empty one and no file are left as they are."""
    from fusionlog.io import cut_torn_line, open_appending

    path = tmp_path / "v.jsonl"
    assert cut_torn_line(path) == 0 and not path.exists()
    assert cut_torn_line(Path("/dev/null")) == 0  # not a regular file (a pipe, /dev/stdout): written as it is
    path.write_bytes(b'{"a": 1}\n' + b"x" * 200_000)  # longer than one backwards read
    with caplog.at_level("WARNING"), open_appending(path, "--verdicts", logging.getLogger("t")) as fh:
        fh.write('{"b": 2}\n')
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n' and "cut a torn last line (200000 bytes)" in caplog.text
    assert cut_torn_line(path) == 0 and path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    path.write_bytes(b'{"torn')
    assert cut_torn_line(path) == 6 and path.read_bytes() == b""
    assert cut_torn_line(path) == 0
