"""HTTP service (TestClient and a real uvicorn on 127.0.0.1) and the `detect` CLI, over a small real scorer."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from fusionlog.config import SessionRule
from fusionlog.constants import UNKNOWN_EVENT
from fusionlog.data.readers import iter_lines
from fusionlog.data.registry import BLOCK_KEY, LOGHUB_FORMATS, load_dataset
from fusionlog.embedding import grow_vectors
from fusionlog.errors import FusionLogError
from fusionlog.matcher import TemplateMatcher
from fusionlog.scoring import SessionVerdict
from fusionlog.serving import create_app
from fusionlog.stream import StreamLimits, StreamSessionizer, detect_stream

TOKEN = "s3cret-token"


class LinearTestScorer:
    """A small but real `SessionScorer` for testing the HTTP and CLI plumbing; NOT the FusionLog detector.

    Parsing: a `TemplateMatcher` over the templates of a Drain3 store fitted on real HDFS_2k lines (unseen
    lines become new templates, embedded on the fly). Vectors: the real all-MiniLM-L6-v2 `Embedder`.
    Scoring: a fixed, seeded torch linear layer gives each event a logit; attention = softmax over the
    session's logits; score = sigmoid of the attention-weighted logit. Deterministic, meaningless as a
    detector, and every number it returns comes from real components.
    """

    def __init__(self, templates: list[str], embedder, threshold: float = 0.5) -> None:
        self.rule = SessionRule("key", key_pattern=BLOCK_KEY)
        self.log_format = LOGHUB_FORMATS["HDFS"]
        self.threshold = threshold
        self.matcher = TemplateMatcher(templates)
        self.embedder = embedder
        self.vectors = embedder.encode(templates)  # (n_templates, dim)
        gen = torch.Generator().manual_seed(7)
        self.linear = torch.nn.Linear(self.vectors.shape[1], 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(1, self.vectors.shape[1], generator=gen) * 0.5)
            self.linear.bias.zero_()

    def event_id(self, content: str) -> int:
        eid = self.matcher.event_id(content)
        new = self.matcher.take_new()
        if new:  # embed templates first seen now; a generalised template gets its vector refreshed
            self.vectors = grow_vectors(self.vectors, new, self.embedder)
        return eid

    def template(self, event_id: int) -> str:
        return self.matcher.template(event_id)

    def score_sessions(self, sessions: list[list[int]]) -> tuple[np.ndarray, list[np.ndarray]]:
        scores, atts = [], []
        zero = np.zeros(self.vectors.shape[1], dtype=np.float32)
        with torch.no_grad():
            for ids in sessions:
                x = torch.from_numpy(np.stack([self.vectors[i] if i != UNKNOWN_EVENT else zero for i in ids]))
                logits = self.linear(x).squeeze(-1)  # (n_events,)
                att = torch.softmax(logits, dim=0)
                scores.append(float(torch.sigmoid((att * logits).sum())))
                atts.append(att.numpy())
        return np.asarray(scores, dtype=np.float64), atts

    def verdicts(self, keys: list[str], sessions: list[list[int]]) -> list[SessionVerdict]:
        scores, atts = self.score_sessions(sessions)
        out = []
        for key, ids, score, att in zip(keys, sessions, scores, atts, strict=True):
            top = np.argsort(-att)[:3]
            out.append(SessionVerdict(
                key=key, score=float(score), anomalous=bool(score > self.threshold), events=len(ids),
                top_templates=[{"template": self.template(ids[i]) if ids[i] >= 0 else "<unknown>",
                                "attention": round(float(att[i]), 6), "event_id": ids[i]} for i in top],
                nearest_source_template=None,
                reason="test scorer (linear layer on template vectors)",
                new_templates=len({i for i in ids if i >= self.matcher.n_known}),
            ))
        return out


@pytest.fixture(scope="module")
def hdfs(data_dir):
    ds = load_dataset("hdfs-2k", data_dir, progress=False)
    lines = [line for _, line in iter_lines(data_dir / "loghub2k/HDFS/HDFS_2k.log")]
    return ds, lines


@pytest.fixture(scope="module")
def scorer_factory(hdfs, embedder):
    ds, _ = hdfs
    base = LinearTestScorer(ds.store.templates, embedder)
    scores, _ = base.score_sessions([s.event_ids for s in ds.sessions])
    threshold = float(np.median(scores))  # label-free: half the sample above it

    def make() -> LinearTestScorer:
        return LinearTestScorer(ds.store.templates, embedder, threshold)  # fresh parser state per test

    return make


@pytest.fixture()
def client(scorer_factory):
    with TestClient(create_app(scorer_factory(), max_body_bytes=64 * 1024, max_lines=500)) as c:
        yield c


@pytest.fixture()
def auth_client(scorer_factory):
    with TestClient(create_app(scorer_factory(), token=TOKEN)) as c:
        yield c


# -- happy paths ---------------------------------------------------------------------------------


def test_healthz_and_openapi(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["rule"]["kind"] == "key" and r.json()["auth"] is False
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"lines", "sessions", "examples"}
    assert "SessionIn" in spec["components"]["schemas"] and "DetectResponse" in spec["components"]["schemas"]
    body = spec["paths"]["/v1/baseline"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"lines", "replace", "reason", "source"} and body["required"] == ["lines"]
    assert client.get("/docs").status_code == 200


def test_lines_are_sessionized_and_scored_like_in_process(client, hdfs, scorer_factory):
    _, lines = hdfs
    r = client.post("/v1/detect", json={"lines": lines[:300]})
    assert r.status_code == 200, r.text
    data = r.json()
    verdicts = {v["key"]: v for v in data["verdicts"]}
    # the same lines through the streaming sessionizer and the scorer, in process
    ref = scorer_factory()
    sz = StreamSessionizer(ref.event_id, ref.rule, ref.log_format, StreamLimits(idle_seconds=None))
    sessions = sz.feed_many(lines[:300]) + sz.flush()
    expected = ref.verdicts([s.key for s in sessions], [s.event_ids for s in sessions])
    assert set(verdicts) == {v.key for v in expected}
    for v in expected:
        assert verdicts[v.key]["score"] == pytest.approx(v.score, abs=1e-6)
        assert verdicts[v.key]["anomalous"] == v.anomalous
    assert data["stats"]["lines"] == 300 and data["stats"]["events"] == 300
    assert data["stats"]["sessions"] == len(expected)
    assert data["stats"]["anomalous"] == sum(v.anomalous for v in expected)
    assert 0 < data["stats"]["anomalous"] < len(expected)


def test_ready_sessions_by_lines_template_texts_and_ids(client, hdfs):
    ds, lines = hdfs
    sess = ds.sessions[0]
    block_lines = [ln for ln in lines if sess.key + " " in ln + " "]
    texts = [ds.store.templates[i] for i in sess.event_ids]
    r = client.post("/v1/detect", json={"sessions": [
        {"key": "by-lines", "lines": block_lines},
        {"key": "by-text", "templates": texts},
        {"key": "by-id", "templates": sess.event_ids},
        {"key": "nothing-usable", "lines": ["", "not an hdfs line"]},
    ]})
    assert r.status_code == 200, r.text
    v = {x["key"]: x for x in r.json()["verdicts"]}
    assert set(v) == {"by-lines", "by-text", "by-id"}
    assert v["by-lines"]["score"] == v["by-text"]["score"] == v["by-id"]["score"]
    assert v["by-id"]["events"] == len(sess.event_ids)
    st = r.json()["stats"]
    assert st["empty_sessions"] == 1 and st["unmatched_format"] == 1 and st["empty"] == 1


def test_an_exception_printed_under_a_line_joins_its_session(client, hdfs):
    """A Java trace under an HDFS line: its exception line is an event of that block's session, in `lines` and in
    a session's own `lines`, as `detect` and training read it; the frame is a continuation line."""
    ds, lines = hdfs
    sess = ds.sessions[0]
    block = [ln for ln in lines if sess.key + " " in ln + " "]
    trace = ["java.io.IOException: Connection reset by peer", "\tat sun.nio.ch.FileDispatcherImpl.read0(Native Method)"]
    with_trace = [block[0], *trace, *block[1:]]
    plain = client.post("/v1/detect", json={"lines": block}).json()["verdicts"][0]
    r = client.post("/v1/detect", json={"lines": with_trace, "examples": True}).json()
    v = r["verdicts"][0]
    assert v["key"] == sess.key and v["events"] == plain["events"] + 1 and v["new_templates"] == 1
    assert v["score"] != plain["score"]
    assert (r["stats"]["exception_lines"], r["stats"]["continuation"], r["stats"]["unmatched_format"]) == (1, 1, 0)
    shown = {t["template"]: t["example"]["line"] for t in v["top_templates"]}
    assert shown.get(trace[0], 2) == 2  # when shown, the exception's example is its own line
    own = client.post("/v1/detect", json={"sessions": [{"key": "b", "lines": with_trace}]}).json()
    assert own["verdicts"][0]["score"] == v["score"] and own["stats"]["exception_lines"] == 1


def test_coloured_lines_get_the_plain_lines_verdicts(client, hdfs):
    """Lines a shipper took from a colouring console (`ESC[32mINFO ESC[0m`) are read as the plain lines."""
    _, lines = hdfs
    coloured = [ln.replace(" INFO ", " \x1b[32mINFO\x1b[0m ", 1) + "\x1b[0m" for ln in lines[:200]]
    assert coloured != lines[:200]
    plain = client.post("/v1/detect", json={"lines": lines[:200]}).json()
    shown = client.post("/v1/detect", json={"lines": coloured}).json()
    assert shown["verdicts"] == plain["verdicts"] != [] and shown["stats"]["unmatched_format"] == 0


def test_verdicts_can_carry_the_raw_line_behind_each_top_template(client, hdfs):
    """`"examples": true`: each top template gets the session's first raw line of it, numbered by its place in
    the request's `lines` (or in the session's own `lines`)."""
    ds, lines = hdfs
    body = client.post("/v1/detect", json={"lines": lines[:300], "examples": True}).json()
    plain = client.post("/v1/detect", json={"lines": lines[:300]}).json()
    assert [v["score"] for v in body["verdicts"]] == [v["score"] for v in plain["verdicts"]]
    assert not any("example" in t for v in plain["verdicts"] for t in v["top_templates"])
    shown = [t for v in body["verdicts"] for t in v["top_templates"]]
    assert shown and all(t["example"]["text"] == lines[t["example"]["line"] - 1].strip() for t in shown)
    sess = ds.sessions[0]
    block = [ln for ln in lines if sess.key + " " in ln + " "]
    r = client.post("/v1/detect", json={"sessions": [{"key": "b", "lines": block}], "examples": True}).json()
    for t in r["verdicts"][0]["top_templates"]:
        assert t["example"]["text"] == block[t["example"]["line"] - 1].strip()


def test_unseen_lines_become_new_templates(client):
    line = "081109 203615 148 INFO dfs.DataNode: Kernel panic on rack 7 while flushing blk_42"
    r = client.post("/v1/detect", json={"lines": [line]})
    assert r.status_code == 200
    v = r.json()["verdicts"][0]
    assert v["key"] == "blk_42" and v["new_templates"] == 1
    assert "Kernel panic" in v["top_templates"][0]["template"]


# -- auth ------------------------------------------------------------------------------------------


def test_bearer_token(auth_client):
    body = {"sessions": [{"key": "k", "templates": [0, 1]}]}
    r = auth_client.post("/v1/detect", json=body)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    assert auth_client.post("/v1/detect", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert auth_client.post("/v1/detect", json=body, headers={"Authorization": TOKEN}).status_code == 401
    ok = auth_client.post("/v1/detect", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["verdicts"][0]["key"] == "k"
    # liveness stays open; what is loaded (muted templates, the verdicts file's path) needs the token, as /metrics
    bare = auth_client.get("/healthz")
    assert bare.status_code == 200 and bare.json()["status"] == "ok" and "muted_templates" not in bare.json()
    full = auth_client.get("/healthz", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert full["auth"] is True and full["muted_templates"] == [] and "ingest" in full
    assert auth_client.get("/metrics").status_code == 401
    assert auth_client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


# -- bad input -------------------------------------------------------------------------------------


BAD = [
    ("malformed", b'{"lines": ["a"', 400, "malformed_json", "line 1"),
    ("empty", b"", 400, "malformed_json", "empty"),
    ("not-utf8", b'{"lines": ["caf\xe9"]}', 400, "not_utf8", "UTF-8"),
    ("nested", b"[" * 20_000 + b"]" * 20_000, 400, "malformed_json", "JSON"),
    ("top-level-list", b'["a", "b"]', 422, "invalid_request", "got list"),
    ("lines-not-list", b'{"lines": "one line"}', 422, "invalid_request", "lines"),
    ("line-not-string", b'{"lines": ["ok", 3]}', 422, "invalid_request", "lines.1"),
    ("key-not-string", b'{"sessions": [{"key": 1, "lines": []}]}', 422, "invalid_request", "sessions.0.key"),
    ("template-float", b'{"sessions": [{"key": "k", "templates": [1.5]}]}', 422, "invalid_request", "templates"),
    ("both", b'{"lines": [], "sessions": []}', 422, "invalid_request", "exactly one"),
    ("neither", b"{}", 422, "invalid_request", "exactly one"),
    ("unknown-field", b'{"lines": [], "extra": 1}', 422, "invalid_request", "extra"),
    ("session-both", b'{"sessions": [{"key": "k", "lines": [], "templates": []}]}', 422, "invalid_request",
     "exactly one"),
    ("bad-event-id", b'{"sessions": [{"key": "k", "templates": [0, 99999]}]}', 422, "invalid_request", "99999"),
    ("negative-id", b'{"sessions": [{"key": "k", "templates": [-1]}]}', 422, "invalid_request", "templates[0]"),
    ("object-to-text-model", b'{"lines": ["ok", {"msg": "x"}]}', 422, "invalid_request", "lines[1]: a JSON object"),
    ("session-object-to-text-model", b'{"sessions": [{"key": "k", "lines": [{"msg": "x"}]}]}', 422,
     "invalid_request", "sessions[0].lines[0]"),
    ("too-many-lines", json.dumps({"lines": ["x"] * 501}).encode(), 413, "too_many_lines", "501"),
    ("oversized", json.dumps({"lines": ["x" * 70_000]}).encode(), 413, "body_too_large", "65536"),
]


@pytest.mark.parametrize("body,status,kind,needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_a_named_4xx_and_the_service_keeps_going(client, body, status, kind, needle):
    r = client.post("/v1/detect", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"] == kind
    assert needle in r.json()["detail"]
    ok = client.post("/v1/detect", json={"sessions": [{"key": "k", "templates": [0, 1]}]})
    assert ok.status_code == 200  # nothing broke


def test_a_lone_surrogate_escape_is_replaced_and_counted_never_a_500(client, hdfs):
    """JSON may escape half a UTF-16 pair (`\\ud800`); json.loads keeps it, but no UTF-8 writer takes it (the
    response, the embedder): it becomes U+FFFD and counts as a decode error, as a text/plain body's bad bytes do."""
    _, lines = hdfs
    line = lines[0]
    r = client.post("/v1/detect", content=json.dumps({"lines": [line[:-4] + "\ud800" + line[-4:]]}),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["stats"]["decode_errors"] == 1 and r.json()["stats"]["sessions"] == 1
    body = {"sessions": [{"key": "k\udc80", "templates": ["Receiving block \ud800<*>"]}]}
    r = client.post("/v1/detect", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["verdicts"][0]["key"] == "k\ufffd" and r.json()["stats"]["decode_errors"] == 2
    r = client.post("/v1/detect", content=b'{"lines": [], "\\udc80": 1}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "\ufffd" in r.json()["detail"]  # a field name, refused by name
    ok = client.post("/v1/detect", json={"lines": lines[:3]})
    assert ok.status_code == 200 and ok.json()["stats"]["decode_errors"] == 0


def test_oversized_chunked_body_without_length_is_refused(client):
    def chunks():
        for _ in range(20):
            yield b"x" * 8192

    r = client.post("/v1/detect", content=chunks())
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"


def test_unknown_paths_and_methods_get_json_errors(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.get("/v1/detect")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_scorer_crash_is_a_500_and_the_next_request_works(scorer_factory):
    scorer = scorer_factory()
    real = scorer.verdicts

    def flaky(keys, sessions):
        if "boom" in keys:
            raise RuntimeError("model exploded")
        return real(keys, sessions)

    scorer.verdicts = flaky
    with TestClient(create_app(scorer)) as c:
        r = c.post("/v1/detect", json={"sessions": [{"key": "boom", "templates": [0]}]})
        assert r.status_code == 500 and r.json()["error"] == "internal"
        assert c.post("/v1/detect", json={"sessions": [{"key": "fine", "templates": [0]}]}).status_code == 200
        assert 'fusionlog_errors_total{kind="internal"} 1' in c.get("/metrics").text


def test_a_crash_outside_detect_is_the_same_500_and_counted_as_an_error(scorer_factory, hdfs):
    """Detect caught its own crashes; an ingest, a flush or a mute that raised was Starlette's plain-text 500 that
    fusionlog_errors_total never counted."""
    scorer = scorer_factory()
    scorer.verdicts = lambda keys, sessions: (_ for _ in ()).throw(RuntimeError("model exploded"))
    with TestClient(create_app(scorer)) as c:
        assert c.post("/v1/ingest", json={"lines": hdfs[1][:5]}).status_code == 200  # nothing scored yet
        r = c.post("/v1/ingest/flush")
        assert r.status_code == 500 and r.json()["error"] == "internal" and "server log" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200
        text = c.get("/metrics").text
        assert 'fusionlog_errors_total{kind="internal"} 1' in text
        assert 'fusionlog_requests_total{path="/v1/ingest/flush",status="500"} 1' in text


def test_a_client_that_hangs_up_mid_body_is_one_log_line_and_no_500(client, caplog):
    """A shipper killed or timed out mid-post is the client's doing: one info line and nginx's 499, not a 60-line
    traceback counted as a server error."""
    import asyncio
    import logging

    app = client.app
    messages = iter([{"type": "http.request", "body": b'{"lines": ["a', "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive():
        return next(messages)

    async def send(message):
        pass

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/detect", "raw_path": b"/v1/detect", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    with caplog.at_level(logging.INFO):
        asyncio.run(app(scope, receive, send))
    gone = [r for r in caplog.records if "closed the connection" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO and not gone[0].exc_info
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    text = client.get("/metrics").text
    assert 'fusionlog_requests_total{path="/v1/detect",status="499"} 1' in text
    assert 'status="500"' not in text


def test_a_busy_scorer_never_blocks_the_event_loop(client):
    service = client.app.state.service
    service.lock.acquire()  # as if a big request were being scored in a worker thread
    release = threading.Timer(0.2, service.lock.release)
    try:
        assert client.get("/healthz").status_code == 200  # answered while the scorer is busy
        release.start()
        r = client.post("/v1/detect", json={"sessions": [{"key": "k", "templates": [0]}]})
        assert r.status_code == 200  # waited for the lock in a worker thread, not on the loop
    finally:
        release.join()
    assert not service.lock.locked()


def test_metrics_count_requests_sessions_errors_and_latency(client):
    client.post("/v1/detect", json={"sessions": [{"key": "a", "templates": [0, 1]}, {"key": "b", "templates": [2]}]})
    client.post("/v1/detect", content=b"{nope")
    text = client.get("/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['fusionlog_requests_total{path="/v1/detect",status="200"}'] == 1
    assert samples['fusionlog_requests_total{path="/v1/detect",status="400"}'] == 1
    assert samples["fusionlog_sessions_scored_total"] == 2
    assert samples['fusionlog_errors_total{kind="malformed_json"}'] == 1
    assert samples['fusionlog_request_duration_seconds_count{path="/v1/detect"}'] == 2
    assert samples['fusionlog_request_duration_seconds_bucket{le="+Inf",path="/v1/detect"}'] == 2
    assert samples["fusionlog_up"] == 1
    # present from the start; this test scorer has no score cache (fusionlog.served.ScoreCache)
    assert samples["fusionlog_score_cache_hits_total"] == samples["fusionlog_score_cache_misses_total"] == 0
    assert "fusionlog_score_cache_entries" not in samples
    assert "# TYPE fusionlog_request_duration_seconds histogram" in text


# -- a real server -----------------------------------------------------------------------------------


def test_real_uvicorn_on_loopback(scorer_factory, hdfs):
    import uvicorn

    _, lines = hdfs
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port, held by us: no race with other tests
    port = sock.getsockname()[1]
    app = create_app(scorer_factory(), token=TOKEN)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, timeout=20) as http:
            assert http.get("/healthz").json()["auth"] is True
            assert http.post("/v1/detect", json={"lines": lines[:5]}).status_code == 401
            assert http.post("/v1/detect", content=b'{"lines": [1]}', headers=auth).status_code == 422

            def one(i: int) -> int:
                r = http.post("/v1/detect", json={"lines": lines[i * 20:(i + 1) * 20]}, headers=auth)
                return r.status_code

            with ThreadPoolExecutor(8) as pool:  # concurrent requests share one scorer under the lock
                assert list(pool.map(one, range(24))) == [200] * 24
            r = http.post("/v1/detect", json={"lines": lines[:50]}, headers=auth)
            assert r.status_code == 200 and r.json()["stats"]["events"] == 50
            assert 'status="200"} 25' in http.get("/metrics", headers=auth).text
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
    assert not thread.is_alive()


# -- the detect CLI -------------------------------------------------------------------------------------


@pytest.fixture()
def fake_detector(monkeypatch, scorer_factory):
    """Make `fusionlog.served.load_scorer` return the test scorer (the plumbing under test is the CLI's)."""
    import fusionlog.served

    made = []

    def load_scorer(path):
        made.append(scorer_factory())
        return made[-1]

    monkeypatch.setattr(fusionlog.served, "load_scorer", load_scorer)
    return made


def _detect(argv: list[str]) -> int:
    """`fusionlog detect ARGV` through the command module itself (as fusionlog.cli wires it)."""
    import argparse

    from fusionlog.commands import detect

    parser = argparse.ArgumentParser()
    detect.add_args(parser)
    return detect.run(parser.parse_args(argv))


def test_detect_cli_file_matches_in_process_scores(tmp_path, fake_detector, hdfs, data_dir, scorer_factory):
    ds, _ = hdfs
    out = tmp_path / "verdicts.jsonl"
    rc = _detect(["--model", str(tmp_path), str(data_dir / "loghub2k/HDFS/HDFS_2k.log"), "-o", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(ds.sessions)
    # in process: the batch dataset's sessions, scored directly
    ref = scorer_factory().verdicts([s.key for s in ds.sessions], [s.event_ids for s in ds.sessions])
    got = {r["key"]: r for r in rows}
    for v in ref:
        assert got[v.key]["score"] == pytest.approx(v.score, abs=1e-6)
        assert got[v.key]["events"] == v.events and got[v.key]["closed_by"] == "flush"


def test_detect_cli_stdin_and_bounded_memory(tmp_path, monkeypatch, fake_detector, hdfs):
    _, lines = hdfs
    data = ("\n".join(lines[:400]) + "\n").encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    out = tmp_path / "v.jsonl"
    rc = _detect(["--model", str(tmp_path), "-", "-o", str(out), "--max-open-sessions", "10"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(r["events"] for r in rows) == 400  # evicted sessions are scored, never dropped
    assert {r["closed_by"] for r in rows} >= {"evicted", "flush"}


def test_detect_cli_on_a_folder_that_is_no_artifact_is_one_clear_error(tmp_path):
    with pytest.raises(FusionLogError, match="missing config.json"):  # fusionlog.cli prints one line, exit 2
        _detect(["--model", str(tmp_path), "/dev/null"])
    with pytest.raises(FusionLogError, match="not found"):
        _detect(["--model", str(tmp_path / "missing"), "/dev/null"])


def test_detect_stream_scores_in_batches_with_heartbeats(scorer_factory, hdfs):
    _, lines = hdfs
    scorer = scorer_factory()
    calls = []
    real = scorer.verdicts
    scorer.verdicts = lambda k, s: (calls.append(len(k)), real(k, s))[1]
    stream = lines[:100] + [None] + lines[100:200]  # a heartbeat in the middle scores what is pending
    limits = StreamLimits(max_open_sessions=5, idle_seconds=None)
    rows = list(detect_stream(scorer, stream, limits, batch_size=1000))
    assert sum(r["events"] for r in rows) == 200
    assert len(calls) == 2 and sum(calls) == len(rows)


def test_serving_path_imports_no_llm_or_training_code():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        top = name.split('.')[0]\n"
        "        if top in ('vllm', 'peft', 'distill', 'router') or name.startswith('fusionlog.training'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fusionlog.serving, fusionlog.stream, fusionlog.matcher, fusionlog.commands.detect\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('vllm', 'peft', 'torch', 'transformers')]\n"
        "print(bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"  # the HTTP layer does not even pull torch in; the detector does
