"""Stack traces in text logs: the exception line is an event of the record it follows (batch, stream, HTTP)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusionlog.config import SessionRule
from fusionlog.constants import UNKNOWN_EVENT
from fusionlog.data.named_formats import LOGHUB_FORMATS
from fusionlog.data.raw import RawFile, RawSpec, load_raw
from fusionlog.data.readers import iter_lines
from fusionlog.data.traces import MAX_EXCEPTION_LINES, TraceTail, exception_line
from fusionlog.stream import StreamLimits, StreamSessionizer

NO_TIMEOUTS = StreamLimits(idle_seconds=None, wall_idle_seconds=None)
APP_FORMAT = r"<Date> <Time> <Level> \[<Thread>\] <Content>"
REQUEST_KEY = r"(req-\d+)"


@pytest.mark.parametrize("line", [
    "java.net.ConnectException: Connection refused",
    "Caused by: java.io.IOException: Broken pipe",
    'Exception in thread "main" java.lang.IllegalStateException: closed',
    "ValueError: invalid literal for int() with base 10: 'x'",
    "requests.exceptions.ConnectionError: HTTPConnectionPool(host='db', port=5432)",
    "KeyError",
    "System.IO.IOException: The disk is full",
    "TypeError: Cannot read properties of undefined (reading 'id')",
    "Error: ENOENT: no such file or directory",
    "panic: runtime error: index out of range [3] with length 3",
])
def test_exception_lines_are_recognised(line):
    assert exception_line(line) == line


@pytest.mark.parametrize("line", [
    "\tat java.net.PlainSocketImpl.socketConnect(Native Method)",
    "    at Object.<anonymous> (/app/index.js:3:9)",
    '  File "/app/main.py", line 3, in <module>',
    "Traceback (most recent call last):",
    "\t... 3 more",
    "   --- End of inner exception stack trace ---",
    "    raise ValueError('x')",
    "ErrorHandler registered for /api",
    "Exceptions: 3 handled, 0 dropped",
    "goroutine 1 [running]:",
    "",
])
def test_frames_and_other_lines_are_not_exception_lines(line):
    assert exception_line(line) is None


def test_a_record_keeps_a_bounded_number_of_exception_lines():
    tail: TraceTail[str] = TraceTail()
    assert tail.exception("ValueError: before any record") is None  # no record to belong to
    assert not tail.frame("\tat X.y(X.java:1)")
    tail.record("r1")
    got = [tail.exception(f"java.lang.Exception: {i}") for i in range(MAX_EXCEPTION_LINES + 2)]
    assert got[:MAX_EXCEPTION_LINES] == [(f"java.lang.Exception: {i}", "r1") for i in range(MAX_EXCEPTION_LINES)]
    assert got[MAX_EXCEPTION_LINES:] == [None, None]
    assert tail.frame("java.lang.Exception: over the bound") and tail.frame("\tat X.y(X.java:1)")
    assert tail.frame("Traceback (most recent call last):") and not tail.frame("a line in another format")
    tail.record("r2")
    assert tail.exception("KeyError: 'id'") == ("KeyError: 'id'", "r2")


def _spec(path: Path, log_format: str, rule: SessionRule) -> RawSpec:
    return RawSpec(system="app", files=(RawFile(str(path)),), log_format=log_format, rule=rule)


def _stream(ds, spec: RawSpec, path: Path, limits: StreamLimits = NO_TIMEOUTS) -> StreamSessionizer:
    sz = StreamSessionizer(ds.store.match_line, spec.rule, spec.log_format, limits)
    sz.finished = sz.feed_many(line for _, line in iter_lines(path)) + sz.flush()  # type: ignore[attr-defined]
    return sz


@pytest.mark.parametrize("rule", [SessionRule("time", seconds=60), SessionRule("lines", window=20)])
def test_java_traces_join_their_record_in_batch_and_stream(zookeeper_traces, data_dir, rule):
    """A Java service's log (Zookeeper's lines with the traces loghub cut out): each exception line becomes an
    event beside the record it follows; frames are counted, not parsed; streaming reads the same sessions."""
    path, n_exceptions, n_frames = zookeeper_traces
    spec = _spec(path, LOGHUB_FORMATS["Zookeeper"], rule)
    ds = load_raw("zk-traces", spec, data_dir, progress=False)
    assert ds.stats.exception_lines == n_exceptions > 80
    assert ds.stats.continuation == n_frames and ds.stats.unmatched_format == 0  # frames are no format error
    assert sum(len(s.event_ids) for s in ds.sessions) == 2000 + n_exceptions
    by_text = {t: i for i, t in enumerate(ds.templates)}
    refused = by_text["java.net.ConnectException: Connection refused"]
    channel = [i for i, t in enumerate(ds.templates) if t.startswith("Cannot open channel")]
    for s in ds.sessions:  # a window holds the exception exactly where it holds its record (none cross here)
        assert s.event_ids.count(refused) == sum(s.event_ids.count(i) for i in channel)
    assert "Caused by: java.io.IOException: Broken pipe" in by_text
    plain = load_raw("zk", _spec(data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log", spec.log_format, rule), data_dir,
                     progress=False)
    if rule.kind == "time":  # the traces add events, never windows: each exception has its record's time
        assert [s.key for s in ds.sessions] == [s.key for s in plain.sessions]
    sz = _stream(ds, spec, path)
    assert {s.key: s.event_ids for s in sz.finished} == {s.key: s.event_ids for s in ds.sessions}
    assert sz.stats.read.to_dict() == ds.stats.to_dict()


def test_exceptions_join_their_records_session_key(tmp_path, data_dir):
    """Keyed sessions: the exception goes to the session of the record it follows, though it names no key;
    a Python traceback gives its last line; an exception before any record is counted, not guessed."""
    log = tmp_path / "app.log"
    log.write_text("\n".join([
        "ValueError: printed before any record",
        "2026-11-28 10:00:00,001 INFO [main] req-1 accepted",
        "2026-11-28 10:00:00,002 INFO [main] req-2 accepted",
        "2026-11-28 10:00:00,010 ERROR [pool-1] req-1 request failed",
        "java.net.ConnectException: Connection refused",
        "\tat java.net.PlainSocketImpl.socketConnect(Native Method)",
        "Caused by: java.net.NoRouteToHostException: No route to host",
        "\t... 7 more",
        "2026-11-28 10:00:00,020 ERROR [worker] req-2 handler crashed",
        "Traceback (most recent call last):",
        '  File "/app/handler.py", line 12, in handle',
        "    return int(body)",
        "ValueError: invalid literal for int() with base 10: 'x'",
        "2026-11-28 10:00:00,030 INFO [main] req-1 closed",
    ]) + "\n", encoding="utf-8")
    spec = _spec(log, APP_FORMAT, SessionRule("key", key_pattern=REQUEST_KEY))
    ds = load_raw("app", spec, data_dir, progress=False)
    texts = {s.key: [ds.templates[i] for i in s.event_ids] for s in ds.sessions}
    assert len(texts["req-1"]) == 5 and texts["req-1"][2:4] == [  # in line order: after "failed", before "closed"
        "java.net.ConnectException: Connection refused",
        "Caused by: java.net.NoRouteToHostException: No route to host",
    ]
    assert texts["req-2"][-1] == "ValueError: invalid literal for int() with base <:NUM:>: 'x'"  # Drain's mask
    assert ds.stats.exception_lines == 3
    assert ds.stats.unmatched_format == 1  # the ValueError before any record
    assert ds.stats.continuation == 2 + 3  # the Java frames, Python's head and frames
    sz = _stream(ds, spec, log)
    assert {s.key: s.event_ids for s in sz.finished} == {s.key: s.event_ids for s in ds.sessions}
    assert sz.stats.read.to_dict() == {**ds.stats.to_dict(), "no_session_key": 0}


def test_a_trace_never_runs_from_one_file_into_the_next_in_batch_or_in_detect(tmp_path, data_dir):
    """Two files read as one log: b.log begins with an exception line (its record was never written there). Training's
    batch reading starts each file's trace afresh; `detect`'s stream over the same files (`files_lines` telling the
    sessionizer each file) reads the same sessions: the line is counted, not given to a.log's last record (req-1).
    Before stop 30, `detect a.log b.log` gave it to req-1."""
    from fusionlog.stream import files_lines
    from fusionlog.types import ReadStats

    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("2026-11-28 10:00:00,001 INFO [main] req-1 accepted\n", encoding="utf-8")
    b.write_text("java.net.ConnectException: Connection refused\n"
                 "2026-11-28 10:00:01,001 INFO [main] req-2 accepted\n"
                 "2026-11-28 10:00:01,002 ERROR [main] req-2 failed\n"
                 "java.io.IOException: Broken pipe\n", encoding="utf-8")
    spec = RawSpec(system="app", files=(RawFile(str(a)), RawFile(str(b))), log_format=APP_FORMAT,
                   rule=SessionRule("key", key_pattern=REQUEST_KEY))
    ds = load_raw("app", spec, data_dir, progress=False)
    assert {s.key: len(s.event_ids) for s in ds.sessions} == {"req-1": 1, "req-2": 3}
    assert (ds.stats.exception_lines, ds.stats.unmatched_format) == (1, 1)
    sz = StreamSessionizer(ds.store.match_line, spec.rule, spec.log_format, NO_TIMEOUTS)
    lines = files_lines([a, b], ReadStats(), on_file=sz.from_file)
    finished = sz.feed_many(lines) + sz.flush()
    assert {s.key: s.event_ids for s in finished} == {s.key: s.event_ids for s in ds.sessions}
    assert (sz.stats.read.exception_lines, sz.stats.read.unmatched_format) == (1, 1)


def test_a_traceback_printed_between_json_records_joins_the_record(tmp_path, data_dir):
    """A JSON service whose crash handler printed a plain traceback: its last line is an event of the record."""
    log = tmp_path / "svc.jsonl.log"
    log.write_text("\n".join([
        '{"time": "2026-11-28T10:00:00Z", "level": "info", "msg": "job started"}',
        '{"time": "2026-11-28T10:00:01Z", "level": "error", "msg": "job aborted"}',
        "Traceback (most recent call last):",
        '  File "/srv/job.py", line 40, in run',
        "psycopg2.OperationalError: could not connect to server: Connection refused",
        '{"time": "2026-11-28T10:01:30Z", "level": "info", "msg": "job started"}',
    ]) + "\n", encoding="utf-8")
    spec = _spec(log, "json", SessionRule("time", seconds=60))
    ds = load_raw("svc", spec, data_dir, progress=False)
    windows = [[ds.templates[i] for i in s.event_ids] for s in ds.sessions]
    assert [len(w) for w in windows] == [3, 1]
    assert windows[0][2] == "psycopg2.OperationalError: could not connect to server: Connection refused"
    sz = _stream(ds, spec, log)
    assert [s.event_ids for s in sz.finished] == [s.event_ids for s in ds.sessions]
    assert UNKNOWN_EVENT not in [i for s in sz.finished for i in s.event_ids]
