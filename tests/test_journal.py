"""`serve --journal`: an ingest stream's open sessions survive a crash (`fusionlog.journal`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from fusionlog import journal as journal_mod
from fusionlog.errors import ConfigError
from fusionlog.ingest import IngestConfig, IngestStreams, VerdictSink
from fusionlog.journal import StreamJournal, read_journal
from fusionlog.serving import create_app
from fusionlog.stream import StreamCarry
from tests.test_follow_state import _parts, interleaved
from tests.test_ingest import make_scorer, os_lines  # noqa: F401 - fixtures

STREAM = "nova/compute-1"  # a name with a slash: the file name is quoted


def _posts(lines: list[str], size: int = 97) -> list[list[str]]:
    return [lines[i:i + size] for i in range(0, len(lines), size)]


def _seen(verdicts: list[dict]) -> list[tuple]:
    return sorted((v["key"], round(v["score"], 6), v["events"]) for v in verdicts)


def test_a_crashed_serve_loses_no_session_and_writes_none_twice(os_lines, make_scorer, tmp_path):  # noqa: F811
    """Posts to a journaled stream, then the process dies (no shutdown: nothing flushed). A new serve on the
    same journal folder has the open sessions back; with the verdicts written before the crash, its flush
    gives exactly the sessions and scores of a serve that never crashed, none twice."""
    cfg = IngestConfig(idle_seconds=60.0, wall_idle_seconds=None, journal_dir=str(tmp_path))
    with TestClient(create_app(make_scorer(), ingest=IngestConfig(idle_seconds=60.0, wall_idle_seconds=None))) as c:
        whole = [v for part in _posts(os_lines) for v in c.post(f"/v1/ingest?stream={STREAM}",
                                                                json={"lines": part}).json()["verdicts"]]
        whole += c.post(f"/v1/ingest/flush?stream={STREAM}").json()["verdicts"]
    crashed = TestClient(create_app(make_scorer(), ingest=cfg))  # never entered: its shutdown never runs
    before = [v for part in _posts(os_lines) for v in crashed.post(f"/v1/ingest?stream={STREAM}",
                                                                   json={"lines": part}).json()["verdicts"]]
    open_then = crashed.get("/healthz").json()["ingest"]["open_sessions"]
    assert open_then > 0 and [p.name for p in tmp_path.glob("*.journal")] == ["nova%2Fcompute-1.journal"]
    with pytest.raises(ConfigError, match="another serve uses it"):  # a second replica on the same folder
        create_app(make_scorer(), ingest=cfg)
    service = crashed.app.state.service  # the process dies: the kernel closes its files and drops its lock
    service.streams.close()
    service.journal_lock.close()
    (tmp_path / ".nova%2Fcompute-1.journal.tmp").write_text("a rewrite the crash cut", encoding="utf-8")
    with TestClient(create_app(make_scorer(), ingest=cfg)) as client:
        health = client.get("/healthz").json()["ingest"]
        assert (health["streams"], health["open_sessions"], health["journal"]) == (1, open_then, str(tmp_path))
        assert not list(tmp_path.glob("*.tmp"))
        after = client.post(f"/v1/ingest/flush?stream={STREAM}").json()["verdicts"]
        assert not list(tmp_path.glob("*journal*"))  # flushed: nothing left to replay
    assert _seen(before + after) == _seen(whole) and len(before) > 0


def test_sessions_finished_by_a_post_whose_verdicts_were_not_written_are_scored_at_recovery(
        os_lines, make_scorer, tmp_path):  # noqa: F811
    """A crash after a post's lines reached the journal but before its verdicts were written (its mark is
    missing): the recovery scores the sessions those lines finished. A line cut by the crash is skipped."""
    limits = IngestConfig(idle_seconds=60.0, wall_idle_seconds=None, journal_dir=str(tmp_path))
    streams = IngestStreams(make_scorer(), limits, VerdictSink(limits))
    finished_last = []
    for part in _posts(os_lines):
        finished_last, _ = streams.feed(STREAM, part)
    assert finished_last  # the last post closed sessions (log-time idle)
    path = next(tmp_path.iterdir())
    rows = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(rows[-1]) == {"done": 600} and json.loads(rows[-2]) == {"post": 600 - 97 * 6}
    # the crash: the last post's mark never written, and the next post cut while its lines were written
    cut = [" " + line for line in os_lines[:2]] + [" 2017-05-16 00:13:22.112 2931 INFO nova.compu"]
    path.write_text("\n".join(rows[:-1] + cut), encoding="utf-8")
    assert read_journal(path).uncommitted == 3  # never answered: its shipper sends them again
    written = tmp_path / "written.jsonl"  # where the recovery's verdicts go: the crash cut a verdict's line there
    written.write_text('{"key": "earlier"}\n{"key": "torn", "sco', encoding="utf-8")
    again = IngestStreams(make_scorer(), limits, VerdictSink(IngestConfig(verdicts_path=str(written))))
    assert again.recover() == {STREAM: streams.open_sessions()[STREAM]}
    earlier, *recovered_verdicts = [json.loads(row) for row in written.read_text(encoding="utf-8").splitlines()]
    assert earlier == {"key": "earlier"} and _seen(recovered_verdicts) == _seen(finished_last)
    after = read_journal(path)
    assert after.done == 600 and after.uncommitted == 0  # marked now, the cut post gone: a second crash agrees
    assert len([e for e in after.entries if isinstance(e, str)]) == 600
    assert _seen(again.flush(STREAM)) == _seen(streams.flush(STREAM))


def test_a_wall_idle_close_is_replayed_where_it_happened(os_lines, make_scorer, tmp_path):  # noqa: F811
    """The background poll closed the instances quiet for 30 s while others stayed open; then their lines came
    again. A replay closes the same sessions at the same place, so every reopened session is the original's."""
    clock = [0.0]
    (tmp_path / "j").mkdir()
    cfg = IngestConfig(idle_seconds=None, wall_idle_seconds=30.0, journal_dir=str(tmp_path / "j"))
    streams = IngestStreams(make_scorer(), cfg, VerdictSink(cfg))
    streams.feed(STREAM, [])
    streams._streams[STREAM].clock = lambda: clock[0]  # the wall clock the poll reads, stepped by the test
    streams.feed(STREAM, os_lines[:150])
    clock[0] = 50.0
    streams.feed(STREAM, os_lines[150:300])
    clock[0] = 70.0
    closed = streams.poll()  # the instances only the first post touched
    assert closed and streams.open_sessions()[STREAM] > 0
    clock[0] = 75.0
    streams.feed(STREAM, os_lines[:300])  # the same instances again: the closed ones start new sessions
    path = next((tmp_path / "j").iterdir())
    assert sorted(next(e for e in read_journal(path).entries if isinstance(e, list))) == sorted(
        v["key"] for v in closed)
    shutil.copytree(tmp_path / "j", tmp_path / "copy")  # the journal as a crash would leave it
    again = IngestStreams(make_scorer(), IngestConfig(idle_seconds=None, wall_idle_seconds=30.0,
                                                      journal_dir=str(tmp_path / "copy")), VerdictSink(cfg))
    assert again.recover() == {STREAM: streams.open_sessions()[STREAM]}
    original, replayed = streams.flush(STREAM), again.flush(STREAM)
    assert _seen(replayed) == _seen(original)
    reopened = {v["key"] for v in closed}
    assert all(v["first_line"] > 300 for v in replayed if v["key"] in reopened)


def test_a_rewritten_journal_replays_size_closes_and_part_numbers(os_lines, make_scorer, tmp_path,  # noqa: F811
                                                                    monkeypatch):
    """At most 3 events a session, one line a post. The journal is rewritten from D's first line (8) while C, open
    since line 4, fills up at line 10: the replay's copy of C holds 2 events there. The saved size close ends it
    where the first serve did, and A, split before the rewrite, numbers its next session on from the header."""
    monkeypatch.setattr(journal_mod, "COMPACT_MIN_LINES", 2)
    monkeypatch.setattr(journal_mod, "COMPACT_FACTOR", 2)
    lines = interleaved(os_lines, "AAACBBBDCCEEECCCA")
    (tmp_path / "j").mkdir()
    cfg = IngestConfig(idle_seconds=None, wall_idle_seconds=None, max_events=3, journal_dir=str(tmp_path / "j"))
    streams = IngestStreams(make_scorer(), cfg, VerdictSink(cfg))
    for line in lines[:13]:
        streams.feed(STREAM, [line])
    replay = read_journal(next((tmp_path / "j").iterdir()))
    assert replay.base == 7 and sorted(replay.cuts) == [10, 13] and sorted(replay.parts.values()) == [1, 1, 1]
    shutil.copytree(tmp_path / "j", tmp_path / "copy")  # the journal as a crash would leave it
    again = IngestStreams(make_scorer(), replace(cfg, journal_dir=str(tmp_path / "copy")), VerdictSink(cfg))
    again.recover()
    for line in lines[13:]:
        streams.feed(STREAM, [line])
        again.feed(STREAM, [line])
    original, replayed = streams.flush(STREAM), again.flush(STREAM)
    assert _parts(replayed) == _parts(original) and [v["part"] for v in original if v["first_line"] == 17] == [1]


def test_a_journal_rewritten_inside_a_cut_line_window_replays_its_key_and_count(bgl_artifact, data_dir, tmp_path,
                                                                                monkeypatch):
    """BGL's 20-line windows cut every 6 records, posted 7 lines at a time: after line 49 the journal is rewritten
    from the last post's end before the open part's first line (47), line 42, inside part 0 of window `lines:41`. The
    header keeps the sessionizer's carry there, so the replay counts the window on from its third record under its
    key (before stop 29 it began a window `lines:43` of its own and cut every later one elsewhere)."""
    from fusionlog.stream import load_scorer

    monkeypatch.setattr(journal_mod, "COMPACT_MIN_LINES", 2)
    monkeypatch.setattr(journal_mod, "COMPACT_FACTOR", 2)
    scorer = load_scorer(bgl_artifact)
    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:100]
    (tmp_path / "j").mkdir()
    cfg = IngestConfig(idle_seconds=None, wall_idle_seconds=None, max_events=6, journal_dir=str(tmp_path / "j"))
    streams = IngestStreams(scorer, cfg, VerdictSink(cfg))
    for post in _posts(lines[:49], 7):
        streams.feed(STREAM, post)
    replay = read_journal(next((tmp_path / "j").iterdir()))
    assert (replay.base, replay.carry.phase, replay.carry.window, replay.carry.tail_line) == (42, 2, "lines:41", "")
    shutil.copytree(tmp_path / "j", tmp_path / "copy")  # the journal as a crash would leave it
    again = IngestStreams(scorer, replace(cfg, journal_dir=str(tmp_path / "copy")), VerdictSink(cfg))
    again.recover()
    original: list[dict] = []
    replayed: list[dict] = []
    for post in _posts(lines[49:], 7):
        original += streams.feed(STREAM, post)[0]
        replayed += again.feed(STREAM, post)[0]
    original, replayed = original + streams.flush(STREAM), replayed + again.flush(STREAM)
    assert _parts(replayed) == _parts(original)
    assert [(v["key"], v["part"]) for v in original if v["first_line"] in (47, 53, 59)] == [
        ("lines:41", 1), ("lines:41", 2), ("lines:41", 3)]


def test_the_journal_is_emptied_when_nothing_is_open_and_compacted_when_long(tmp_path, monkeypatch):
    j = StreamJournal(tmp_path, "s")
    j.lines_added([f"line {i}" for i in range(1, 11)])
    j.written_through(10)
    j.settle(10, None)  # nothing open: only the header stays, numbering kept
    r = read_journal(j.path)
    assert (r.base, r.done, r.entries) == (10, 10, [])
    monkeypatch.setattr(journal_mod, "COMPACT_MIN_LINES", 20)
    j.lines_added([f"line {i}" for i in range(11, 30)])
    j.closed(["k0"])  # before where the rewrite starts: dropped with its lines
    j.lines_added([f"line {i}" for i in range(30, 33)])
    j.written_through(32)
    j.settle(32, 28, carry=StreamCarry(phase=4, window="lines:29"))  # a post's end: a rewrite may start after it
    j.lines_added(["line 33"])
    j.closed(["k1"])
    j.lines_added([f"line {i}" for i in range(34, 36)])
    j.cut([(29, [("k2", 0)]), (34, [("k3", 1), ("k4", 0)])])  # size closes: only those from line 33 on stay
    j.written_through(35)
    # the oldest open session began at line 28: the last post's end before it is line 10, 25 lines back: kept
    j.settle(35, 28)
    assert read_journal(j.path).base == 10
    j.settle(35, 33, {"k3": 2, "k4": 1})  # now at line 33: the post's end before it is line 32, 3 lines back
    r = read_journal(j.path)
    assert (r.base, r.done, j.lines) == (32, 35, 3)
    assert r.entries == ["line 33", ["k1"], "line 34", "line 35"]
    assert r.cuts == {34: [("k3", 1), ("k4", 0)]} and r.parts == {"k3": 2, "k4": 1}
    assert r.carry == StreamCarry(phase=4, window="lines:29")  # the sessionizer's at the rewrite's start
    j.lines_added(["line 36"])  # appending goes on after the rewrite
    assert read_journal(j.path).entries[-1] == "line 36"
    j.remove()
    assert not j.path.exists()


def test_journal_sync_puts_each_post_on_disk_before_it_is_read(os_lines, make_scorer, tmp_path,  # noqa: F811
                                                                monkeypatch):
    """`--journal-sync`: each post's entry is synced (its file's descriptor, in the write that holds its end mark)
    and a new or rewritten file's folder entry too; without it a post costs no disk flush."""
    import os

    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    plain, durable = StreamJournal(tmp_path, "plain"), StreamJournal(tmp_path, "durable", sync=True)
    assert synced.count(str(durable.path.parent)) == 1  # the new file's folder entry (only with sync)
    synced.clear()
    plain.lines_added(["a 1", "a 2"])
    assert synced == []
    durable.lines_added(["b 1", "b 2"])
    assert synced == [str(durable.path)] and read_journal(durable.path).entries == ["b 1", "b 2"]
    with pytest.raises(ConfigError, match="--journal-sync needs --journal"):
        IngestConfig(journal_sync=True)
    (tmp_path / "j").mkdir()
    cfg = IngestConfig(journal_dir=str(tmp_path / "j"), journal_sync=True)
    streams = IngestStreams(make_scorer(), cfg, VerdictSink(cfg))  # serve --journal DIR --journal-sync
    synced.clear()
    streams.feed("s", os_lines[:5])
    assert str(tmp_path / "j" / "s.journal") in synced


def test_unreadable_journals_are_named_and_left(make_scorer, tmp_path, caplog):  # noqa: F811
    (tmp_path / "x.journal").write_text("not json\n", encoding="utf-8")
    (tmp_path / "y.journal").write_text(json.dumps({"fusionlog_journal": 1, "stream": "bad name!", "base": 0,
                                                    "done": 0}) + "\n", encoding="utf-8")
    cfg = IngestConfig(journal_dir=str(tmp_path))
    assert IngestStreams(make_scorer(), cfg, VerdictSink(cfg)).recover() == {}
    assert "x.journal: not replayed (" in caplog.text and "y.journal: not replayed (" in caplog.text
    assert (tmp_path / "x.journal").exists()  # kept for the operator to look at
    with pytest.raises(ConfigError, match="--journal"):
        IngestConfig(journal_dir=str(tmp_path / "absent"))


def _serve(model, *extra) -> tuple:
    """A real `fusionlog serve` process on a free port: (process, base URL)."""
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "fusionlog.cli", "serve", "--model", str(model), "--port", "0",
                             "--no-access-log", *extra], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if m := re.search(r"running on http://127\.0\.0\.1:(\d+)", line):
            return proc, f"http://127.0.0.1:{m.group(1)}"
    proc.kill()
    raise AssertionError("the server never said where it listens")


def _post(url: str, body: dict | None = None) -> dict:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def test_kill_9_of_a_real_serve_loses_no_open_window(bgl_artifact, data_dir, tmp_path):
    """`fusionlog serve --journal DIR` killed with SIGKILL (no shutdown code runs) while a 20-line window is half
    full: the next serve with the same DIR has it open again, and its flush scores it as one request of all the
    lines would."""
    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:50]
    journal = tmp_path / "journal"  # created by serve
    proc, base = _serve(bgl_artifact)
    try:
        whole = _post(f"{base}/v1/detect", {"lines": lines})["verdicts"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert [v["events"] for v in whole] == [20, 20, 10]
    proc, base = _serve(bgl_artifact, "--journal", str(journal))
    try:
        first = _post(f"{base}/v1/ingest?stream=bgl", {"lines": lines})
    finally:
        proc.kill()  # SIGKILL: the shutdown flush never runs
        proc.wait(timeout=60)
    assert len(first["verdicts"]) == 2 and first["open_sessions"] == 1
    proc, base = _serve(bgl_artifact, "--journal", str(journal))
    try:
        rest = _post(f"{base}/v1/ingest/flush?stream=bgl")["verdicts"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert _seen(first["verdicts"] + rest) == _seen(whole)
    assert rest[0]["closed_by"] == "flush" and not list(journal.glob("*journal*"))


def test_any_line_a_post_can_hold_comes_back_as_it_went(tmp_path):
    """Line breaks inside a JSON string, a lone surrogate from a JSON escape, a leading space or brace, non-ASCII:
    what the sessionizer read is what a replay reads."""
    odd = ["a\nb", "x\ud800y", " lead", '{"k": 1}', "naïve ✓", "tab\there", "cr\rhere", ""]
    j = StreamJournal(tmp_path, "s")
    j.lines_added(odd)
    j.closed(["k\nx"])
    j.lines_added(odd[:2])
    j.close()
    r = read_journal(j.path)
    assert r.entries == [*odd, ["k\nx"], *odd[:2]] and (r.skipped, r.uncommitted) == (0, 0)
    with open(j.path, "ab") as fh:  # the crash cut the next post inside a two-byte character
        fh.write(" naïve".encode()[:-3])
    r = read_journal(j.path)
    assert r.entries == [*odd, ["k\nx"], *odd[:2]] and r.skipped == 1
    StreamJournal.resume(j.path, r).close()  # cut back to the last whole post
    assert j.path.read_bytes().endswith(b'{"post": 2}\n')
