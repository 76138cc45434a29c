"""Streaming sessionizer (same sessions as the batch one, bounded memory), tail -F follower, pipe reader."""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from fusionlog.config import SessionRule
from fusionlog.data.readers import iter_lines
from fusionlog.data.registry import BLOCK_KEY, INSTANCE_KEY, LOGHUB_FORMATS, load_dataset
from fusionlog.errors import ConfigError
from fusionlog.stream import (
    CLOSED_EVICTED,
    CLOSED_FLUSH,
    CLOSED_IDLE,
    CLOSED_SIZE,
    CLOSED_WALL_IDLE,
    CLOSED_WINDOW,
    HeaderParser,
    StreamLimits,
    StreamSessionizer,
    follow,
    read_stream,
)
from fusionlog.types import ReadStats

NO_TIMEOUTS = StreamLimits(idle_seconds=None, wall_idle_seconds=None)


def _lines(path: Path) -> list[str]:
    return [line for _, line in iter_lines(path)]


@pytest.fixture(scope="module")
def hdfs2k(data_dir):
    ds = load_dataset("hdfs-2k", data_dir, progress=False)
    return ds, _lines(data_dir / "loghub2k/HDFS/HDFS_2k.log")


@pytest.fixture(scope="module")
def bgl_lines(data_dir):
    return _lines(data_dir / "loghub2k/BGL/BGL_2k.log")


def _run(sz: StreamSessionizer, lines):
    return sz.feed_many(lines) + sz.flush()


def test_key_sessions_equal_the_batch_sessionizer(hdfs2k):
    ds, lines = hdfs2k
    sz = StreamSessionizer(ds.store.match_line, SessionRule("key", key_pattern=BLOCK_KEY),
                           LOGHUB_FORMATS["HDFS"], NO_TIMEOUTS)
    out = _run(sz, lines)
    assert {s.key: s.event_ids for s in out} == {s.key: s.event_ids for s in ds.sessions}
    assert all(s.closed_by == CLOSED_FLUSH for s in out)
    assert sz.stats.read.lines == 2000 and sz.stats.sessions == len(ds.sessions)


def test_filtered_and_stripped_lines_give_the_batch_sessions(data_dir):
    """Kalaki nova logs: stack-trace lines are continuation lines and `[instance: <uuid>]` is cut from the
    content before parsing (RawSpec.line_filter / strip); streaming must read them the same way."""
    from fusionlog.data.registry import dataset_info

    ds = load_dataset("openstack-raw", data_dir, progress=False)
    spec = dataset_info("openstack-raw").spec
    lines = [line for f in spec.files for line in _lines(data_dir / f.path)]
    sz = StreamSessionizer(ds.store.match_line, spec.rule, spec.log_format, NO_TIMEOUTS,
                           line_filter=spec.line_filter, strip=spec.strip)
    out = _run(sz, lines)
    assert {s.key: s.event_ids for s in out} == {s.key: s.event_ids for s in ds.sessions}
    assert sz.stats.read.continuation == ds.stats.continuation > 0
    assert HeaderParser("<Content>", strip=r"^\[x\]\s*").parse("[x] Claim successful") == ("Claim successful", None)
    assert HeaderParser("<Content>", strip=r"^\[x\]\s*").parse("[x]") == ("[x]", None)  # all prefix: kept
    with pytest.raises(ConfigError, match="not a regular expression"):
        HeaderParser("<Content>", line_filter="(")


@pytest.mark.parametrize("rule", [SessionRule("lines", window=20), SessionRule("time", seconds=600)],
                         ids=["lines", "time"])
def test_window_sessions_equal_the_batch_sessionizer(data_dir, bgl_lines, rule):
    ds = load_dataset("bgl", data_dir, rule=rule, progress=False)
    sz = StreamSessionizer(ds.store.match_line, rule, LOGHUB_FORMATS["BGL"], NO_TIMEOUTS)
    out = _run(sz, bgl_lines)
    assert [(s.key, s.event_ids) for s in out] == [(s.key, s.event_ids) for s in ds.sessions]
    assert [(s.start, s.end) for s in out] == [(s.start, s.end) for s in ds.sessions]
    assert {s.closed_by for s in out[:-1]} == {CLOSED_WINDOW} and out[-1].closed_by == CLOSED_FLUSH


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
def test_structured_time_windows_equal_the_batch_sessionizer(fmt, request):
    """Detection reads JSON / logfmt lines by key as training did: same windows, same times; others counted."""
    from fusionlog.data.raw import RawFile, RawSpec

    log = request.getfixturevalue(f"zookeeper_{fmt}")
    rule = SessionRule("time", seconds=60)
    spec = RawSpec(system="zk", files=(RawFile(str(log)),), log_format=fmt, rule=rule)
    ds = load_dataset(str(log), spec=spec, progress=False)
    sz = StreamSessionizer(ds.store.match_line, rule, fmt, NO_TIMEOUTS)
    out = _run(sz, [*_lines(log), "a plain banner line", '{"level": "info"}'])
    assert len(out) > 1 and sz.stats.read.unmatched_format == 2
    assert [(s.event_ids, s.start, s.end) for s in out] == [(s.event_ids, s.start, s.end) for s in ds.sessions]


@pytest.mark.parametrize("system", ["Linux", "OpenSSH", "Android", "Proxifier"])
def test_yearless_time_windows_equal_the_batch_sessionizer(data_dir, system):
    """Detection cuts year-less (syslog) time windows where training did, with the same start times."""
    rule = SessionRule("time", seconds=60)
    ds = load_dataset(f"{system.lower()}-2k", data_dir, rule=rule, progress=False)
    assert ds.time_ordered
    sz = StreamSessionizer(ds.store.match_line, rule, LOGHUB_FORMATS[system], NO_TIMEOUTS)
    out = _run(sz, _lines(data_dir / f"loghub2k/{system}/{system}_2k.log"))
    assert len(out) > 1
    assert [(s.event_ids, s.start, s.end) for s in out] == [(s.event_ids, s.start, s.end) for s in ds.sessions]


def test_bounded_memory_emits_every_event_once(data_dir):
    lines = _lines(data_dir / "openstack/kalaki_openstack_logs/openstack-nova-dhcpoff.log")
    rule = SessionRule("key", key_pattern=INSTANCE_KEY)
    fmt = "<Level> <Component> <Content>"
    full = _run(StreamSessionizer(len, rule, fmt, NO_TIMEOUTS), lines)
    sz = StreamSessionizer(len, rule, fmt, StreamLimits(max_open_sessions=20, max_events_per_session=5,
                                                        idle_seconds=None))
    open_seen = []
    out = []
    for line in lines:
        out += sz.feed(line)
        open_seen.append(sz.open_sessions)
    out += sz.flush()
    assert max(open_seen) <= 20 and sz.stats.max_open == 20
    assert all(len(s.event_ids) <= 5 for s in out)
    assert sz.stats.evicted > 0 and sz.stats.split > 0
    closed = sz.stats.closed_by
    assert closed[CLOSED_EVICTED] + closed[CLOSED_SIZE] + closed[CLOSED_FLUSH] == len(out) == sz.stats.sessions
    # nothing lost: a key's parts, in emission order, are exactly its unbounded session
    joined: dict[str, list[int]] = defaultdict(list)
    for s in out:
        joined[s.key] += s.event_ids
    assert dict(joined) == {s.key: s.event_ids for s in full}
    assert sum(len(s.event_ids) for s in out) == sz.stats.events == 3185
    assert any(s.part > 0 for s in out)


def test_a_replay_cuts_a_shorter_copy_where_the_size_limit_cut_the_original():
    """What a replay of `--state` or a journal does with an earlier run's size closes: a copy of a session that
    lacks its first events is closed where the original filled up, the key's parts numbered on; a copy that fills
    up by itself needs nothing. A key's numbering starts over once its session ends otherwise than by size (what a
    state saves of it stays small). A time window the size limit cut goes on under its key as the next part, and its
    part number is forgotten once the window is over (its key never comes again): a saved state does not collect
    them."""
    limits = StreamLimits(max_events_per_session=3, idle_seconds=None)
    first = StreamSessionizer(len, SessionRule("key", key_pattern=r"id=(\w+)"), "<Content>", limits)
    out = [s for line in ["a id=k", "b id=k", "c id=k", "d id=k"] for s in first.feed(line)]
    assert [(s.part, s.closed_by, len(s.event_ids)) for s in out] == [(0, CLOSED_SIZE, 3)]
    assert first.split_parts() == {"k": 1}
    assert [(s.part, s.closed_by) for s in first.flush()] == [(1, CLOSED_FLUSH)]
    assert first.split_parts() == {}  # the key's run of parts ended otherwise than by size: numbering starts over
    replay = StreamSessionizer(len, SessionRule("key", key_pattern=r"id=(\w+)"), "<Content>", limits)
    replay.start_at(1)  # from after the first line
    replay.expect_parts({"k": 0})
    assert not replay.feed("b id=k") and not replay.feed("c id=k")
    cut = replay.cut("k", 0)
    assert [(s.part, s.closed_by, s.first_line, len(s.event_ids)) for s in cut] == [(0, CLOSED_SIZE, 2, 2)]
    assert replay.cut("k", 0) == [] and not replay.feed("d id=k")
    assert [(s.part, s.first_line) for s in replay.flush()] == [(1, 4)]
    windows = StreamSessionizer(len, SessionRule("time", seconds=60), "<Date> <Time> <Content>", limits)
    for line in ["2024-01-01 00:00:0%d x" % i for i in range(4)]:
        windows.feed(line)
    assert windows.split_parts() == {"time:28401120": 1}
    ended = windows.feed("2024-01-01 00:01:00 y")
    assert [(s.key, s.part, s.closed_by) for s in ended] == [("time:28401120", 1, CLOSED_WINDOW)]
    assert windows.split_parts() == {}


def test_a_replay_records_the_size_closes_it_makes_past_the_saved_ones():
    """A replay reads past the last written verdicts up to a wall-idle close saved later: a size close it makes on
    the way was never saved (the earlier run died first), so it is recorded for the next save, or a later restart
    would number that key's parts from the wrong point. One the state already holds is not recorded twice."""
    from fusionlog.stream import _replay

    class Checkpoint:
        replay_through, replay_closes, replay_parts, replay_ends = 2, {7: [["m"]]}, {}, []
        replay_cuts = {3: [("j", 0)]}

        def __init__(self):
            self.cuts = []

        def finished(self, line_no, sessions):
            self.cuts.append((line_no, [(s.key, s.part, s.closed_by) for s in sessions]))

    sz = StreamSessionizer(len, SessionRule("key", key_pattern=r"id=(\w+)"), "<Content>",
                           StreamLimits(max_events_per_session=3, idle_seconds=None))
    checkpoint = Checkpoint()
    lines = ["a id=j", "b id=j", "c id=j", "d id=k", "e id=k", "f id=k", "g id=m", "h id=k"]
    late = _replay(sz, iter(lines), checkpoint)
    # j's size close at line 3 and the wall-idle close at 7 were saved; k's size close at line 6 is handed on
    assert checkpoint.cuts == [(6, [("k", 0, CLOSED_SIZE)])]
    assert [(s.key, s.part, s.closed_by) for s in late] == [
        ("j", 0, CLOSED_SIZE), ("k", 0, CLOSED_SIZE), ("m", 0, CLOSED_WALL_IDLE)]
    assert sz.line_no == 7 and sz.split_parts() == {"j": 1, "k": 1}


def test_a_replay_numbers_parts_as_they_were_where_it_begins():
    """Where a replay begins, a key's part number is that of its first session closed after it: by size, or as a
    continuation closed otherwise (its key's numbering started over there); whichever came first."""
    from fusionlog.stream import parts_at_start

    cuts = {12: [("a", 3), ("b", 0)], 20: [("a", 4)], 15: [("c", 1)]}
    ends = [(10, "a", 2), (18, "c", 2), (30, "d", 5)]
    assert parts_at_start(cuts, ends) == {"a": 2, "b": 0, "c": 1, "d": 5}


def test_a_replay_starts_a_keys_numbering_over_where_its_continuation_closed_unseen():
    """A continuation (part 2) open at the replay's first line, with no line after it, was closed by wall-clock
    idleness at line 2: the replay has no copy of it to close, yet the key's numbering starts over there, so the
    key's next session is part 0, as in the earlier run."""
    from fusionlog.stream import _replay

    class Checkpoint:
        replay_through, replay_closes, replay_parts, replay_cuts = 3, {2: [["q"]]}, {"q": 5}, {}
        replay_ends = [(2, "q", 2)]

        def finished(self, line_no, sessions):
            raise AssertionError("nothing new to record")

    sz = StreamSessionizer(len, SessionRule("key", key_pattern=r"id=(\w+)"), "<Content>",
                           StreamLimits(max_events_per_session=3, idle_seconds=None))
    assert _replay(sz, iter(["a id=z", "b id=z", "c id=q"]), Checkpoint()) == []
    assert [(s.key, s.part) for s in sz.flush()] == [("z", 0), ("q", 0)]


def test_a_replay_from_a_carry_measures_log_idleness_from_the_first_runs_newest_time():
    """Two hosts' clocks 15 minutes apart in one log: b's line at 00:20 makes "now" 00:20, so c's lines from the
    other host (00:05) close at once as idle. A replay that begins after b's session closed starts from the carry
    saved there (JSON and back, as a state holds it) and closes c's lines as the first run did; from a blank
    sessionizer it measured from 00:05 and kept them in one session."""
    from fusionlog.stream import BLANK_CARRY, StreamCarry

    def keyed() -> StreamSessionizer:
        return StreamSessionizer(len, SessionRule("key", key_pattern=r"id=(\w+)"), "<Date> <Time> <Content>",
                                 StreamLimits(idle_seconds=60, max_events_per_session=2))

    head = ["2024-01-01 00:20:00 start id=b", "2024-01-01 00:20:01 stop id=b"]
    rest = ["2024-01-01 00:05:00 start id=c", "2024-01-01 00:05:10 stop id=c"]
    first = keyed()
    assert [s.closed_by for s in first.feed_many(head)] == [CLOSED_SIZE] and first.open_sessions == 0
    carry = StreamCarry.from_json(json.loads(json.dumps(first.carry().to_json())))
    assert carry.log_now == first.carry().log_now and carry != BLANK_CARRY
    replay, blank = keyed(), keyed()
    replay.start_at(2, carry)
    blank.start_at(2)

    def sessions(sz: StreamSessionizer) -> list[tuple]:
        return [(s.key, s.closed_by, s.first_line) for s in [*sz.feed_many(rest), *sz.flush()]]

    want = sessions(first)
    assert want == [("c", CLOSED_IDLE, 3), ("c", CLOSED_IDLE, 4)]
    assert sessions(replay) == want and sessions(blank) != want


def test_a_replay_from_a_carry_gives_an_exception_line_to_the_record_before_the_carry():
    """b's second record fills its session (2 events) and closes it; the Java exception line after it joins b as
    a new part. A replay that begins right after that record (a mark there, nothing open) has the record's line in
    the carry, so the exception line is b's event again; from a blank sessionizer it fell under no record."""
    from fusionlog.stream import BLANK_CARRY, StreamCarry

    def keyed() -> StreamSessionizer:
        return StreamSessionizer(len, SessionRule("key", key_pattern=r"id=(\w+)"),
                                 r"<Date> <Time> \[<Thread>\] <Content>", StreamLimits(max_events_per_session=2))

    head = ["2024-01-01 00:20:00 [main] start id=b", "2024-01-01 00:20:01 [main] failed id=b"]
    rest = ["java.io.IOException: Connection reset", "\tat a.b.C.run(C.java:1)",
            "2024-01-01 00:20:05 [main] retry id=b"]
    first = keyed()
    assert [s.closed_by for s in first.feed_many(head)] == [CLOSED_SIZE] and first.oldest_open_line() is None
    carry = StreamCarry.from_json(json.loads(json.dumps(first.carry().to_json())))
    assert carry == first.carry() and carry.tail_line == head[-1] and carry.tail_kept == 0
    replay, blank = keyed(), keyed()
    for sz in (replay, blank):
        sz.start_at(2, carry if sz is replay else BLANK_CARRY)
        sz.expect_parts(first.split_parts())  # as a state holds them (`parts`)

    def sessions(sz: StreamSessionizer) -> list[tuple]:
        return [(s.key, s.part, len(s.event_ids), s.first_line) for s in [*sz.feed_many(rest), *sz.flush()]]

    want = sessions(first)
    assert want == [("b", 1, 2, 3)]
    assert sessions(replay) == want
    assert sessions(blank) == [("b", 1, 1, 5)] and blank.stats.read.exception_lines == 0
    assert StreamCarry.from_json({}) == BLANK_CARRY


def test_windows_reopened_as_two_pods_alternate_keep_unique_keys_and_a_carry_of_one_size():
    """Two pods' lines alternate, pod b a minute behind: nearly every window is opened again on a minute the log's time
    went back to. Every key is unique, and the carry (saved with each resume mark) is as large after 400 minutes as
    after 10 (stop 29's carry held a count per reopened minute, one more each minute). A carry saved by stop 29
    (pairs of bucket and count) reads as their sum, so later windows take no earlier window's key."""
    from fusionlog.stream import StreamCarry

    def pods(minutes: int) -> tuple[list[str], str]:
        sz = StreamSessionizer(len, SessionRule("time", seconds=60), "<Date> <Time> <Content>",
                               StreamLimits(idle_seconds=None))
        lines = [f"2024-01-01 {(m + lag) // 60:02d}:{(m + lag) % 60:02d}:00 tick pod={pod}"
                 for m in range(minutes) for pod, lag in (("a", 1), ("b", 0))]
        keys = [s.key for s in [*sz.feed_many(lines), *sz.flush()]]
        assert len(keys) == len(set(keys)) == 2 * minutes
        return keys, json.dumps(sz.carry().to_json())

    keys, small = pods(10)
    assert keys[:4] == ["time:28401121", "time:28401120.1", "time:28401122", "time:28401121.2"]
    _, large = pods(400)
    assert len(large) == len(small) + 1  # a count of 3 digits for one of 2 (the count, not a list of minutes)
    old = StreamCarry.from_json({"latest": 28401121, "again": [[28401120, 2], [28401119, 1]]})
    assert old.again == 3


def test_key_session_closes_after_idle_log_time():
    sz = StreamSessionizer(len, SessionRule("key", key_pattern=r"id=(\w+)"), "<Date> <Time> <Content>",
                           StreamLimits(idle_seconds=60))
    assert not sz.feed("2024-01-01 00:00:00 start id=a")
    assert not sz.feed("2024-01-01 00:00:30 start id=b")
    done = sz.feed("2024-01-01 00:01:40 more id=b")  # a idle for 100 s > 60, b only 70 s since... b updated now
    assert [(s.key, s.closed_by) for s in done] == [("a", CLOSED_IDLE)]
    assert done[0].start == done[0].end  # one line
    done = sz.feed("2024-01-01 00:05:00 again id=a")
    assert [(s.key, s.closed_by, len(s.event_ids)) for s in done] == [("b", CLOSED_IDLE, 2)]
    assert [s.key for s in sz.flush()] == ["a"]


def test_wall_idle_poll_with_a_fake_clock():
    now = [0.0]
    sz = StreamSessionizer(len, SessionRule("key", key_pattern=r"id=(\w+)"), "<Content>",
                           StreamLimits(idle_seconds=None, wall_idle_seconds=5), clock=lambda: now[0])
    sz.feed("x id=a")
    now[0] = 3.0
    sz.feed("y id=b")
    assert sz.poll() == []
    now[0] = 6.0
    assert [(s.key, s.closed_by) for s in sz.poll()] == [("a", CLOSED_WALL_IDLE)]
    now[0] = 9.0
    assert [s.key for s in sz.poll()] == ["b"] and sz.open_sessions == 0


def test_skipped_lines_are_counted_not_sessionized():
    sz = StreamSessionizer(len, SessionRule("key", key_pattern=r"id=(\w+)"), "<Level> <Content>", NO_TIMEOUTS)
    out = _run(sz, ["", "   ", "INFO no key here", "justoneword", "INFO ok id=1"])
    st = sz.stats.read
    assert (st.lines, st.empty, st.no_session_key, st.unmatched_format) == (5, 2, 1, 1)
    assert [(s.key, s.event_ids) for s in out] == [("1", [len("ok id=1")])]


def test_line_naming_two_keys_joins_both_sessions():
    sz = StreamSessionizer(len, SessionRule("key", key_pattern=BLOCK_KEY), "<Content>", NO_TIMEOUTS)
    out = _run(sz, ["ask to delete blk_1 blk_2", "more blk_2"])
    assert {s.key: len(s.event_ids) for s in out} == {"blk_1": 1, "blk_2": 2}


@pytest.mark.parametrize("system", ["BGL", "HPC", "HDFS"])
def test_header_parser_fast_split_equals_the_format_regex(data_dir, system):
    parser = HeaderParser(LOGHUB_FORMATS[system])
    lines = [ln.strip() for ln in _lines(data_dir / f"loghub2k/{system}/{system}_2k.log") if ln.strip()]
    lines += ["too few tokens", "a  b\tc d e f g h i j  content  with  gaps"]
    for line in lines:
        m = parser.pattern.match(line)
        expected = None if m is None else ((m.group("Content") or "").strip(), m.groupdict())
        assert parser.parse(line) == expected


def test_limits_are_validated():
    with pytest.raises(ConfigError, match="max_open_sessions"):
        StreamLimits(max_open_sessions=0)
    with pytest.raises(ConfigError, match="idle_seconds"):
        StreamLimits(idle_seconds=-1)


# -- follow (tail -F) ---------------------------------------------------------------------------------


def _until_quiet(gen, limit=1000):
    """Lines the follower yields until its next empty poll (None)."""
    out = []
    for _ in range(limit):
        item = next(gen)
        if item is None:
            return out
        out.append(item)
    raise AssertionError("follower never went quiet")


def test_follow_partial_lines_truncation_rotation_and_stop(tmp_path):
    path = tmp_path / "app.log"
    stop = threading.Event()
    stats = ReadStats()
    gen = follow(path, stats, stop=stop, poll_interval=0.001)
    assert _until_quiet(gen) == []  # file missing: waits
    path.write_bytes(b"one\ntwo\nhalf")
    assert _until_quiet(gen) == ["one", "two"]  # "half" waits for its newline
    with open(path, "ab") as fh:
        fh.write(b"-done\nbad \xff byte\n")
    assert _until_quiet(gen) == ["half-done", "bad \ufffd byte"]
    assert stats.decode_errors == 1
    path.write_bytes(b"fresh\n")  # truncated (copytruncate-style): read again from the top
    assert _until_quiet(gen) == ["fresh"]
    assert stats.truncated == 1
    os.rename(path, tmp_path / "app.log.1")  # rotated: the old file's last lines, then the new file
    with open(tmp_path / "app.log.1", "ab") as fh:
        fh.write(b"late in old\n")
    path.write_bytes(b"new file\n")
    assert _until_quiet(gen) + _until_quiet(gen) == ["late in old", "new file"]
    stop.set()
    assert list(gen) == []


def test_follow_from_end_skips_history(tmp_path):
    path = tmp_path / "app.log"
    path.write_bytes(b"old\n")
    gen = follow(path, stop=threading.Event(), poll_interval=0.001, from_end=True)
    assert _until_quiet(gen) == []
    with open(path, "ab") as fh:
        fh.write(b"new\n")
    assert _until_quiet(gen) == ["new"]
    gen.close()


def test_follow_reads_a_file_rewritten_in_place_past_its_position_from_the_top(tmp_path):
    """logrotate's copytruncate empties the file and the writer goes on at its top: written past the follow's
    position before its next poll (the size never went below it), the follow read on from the middle of the new
    lines and lost those before, with no truncation counted. Its first bytes tell it was rewritten: it is read from
    the top and counted; so is a rewrite to the very same size (its mtime changed). Appends are not taken for one."""
    path = tmp_path / "app.log"
    old = [f"old line {i:03d} " + "x" * 20 for i in range(60)]  # past HEAD_BYTES
    path.write_text("".join(line + "\n" for line in old), encoding="utf-8")
    stats = ReadStats()
    gen = follow(path, stats, stop=threading.Event(), poll_interval=0.001)
    assert _until_quiet(gen) == old
    new = [f"new line {i:03d} " + "y" * 30 for i in range(80)]
    path.write_text("".join(line + "\n" for line in new), encoding="utf-8")  # truncated, rewritten past the position
    assert _until_quiet(gen) == new and stats.truncated == 1
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("appended\n")
    assert _until_quiet(gen) == ["appended"] and stats.truncated == 1
    same = [line.replace("new", "NEW") for line in [*new, "appended"]]
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert _until_quiet(gen) == []  # a quiet poll sees this mtime
    path.write_text("".join(line + "\n" for line in same), encoding="utf-8")
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))  # a later mtime, whatever the clock's granularity
    assert _until_quiet(gen) + _until_quiet(gen) == same and stats.truncated == 2
    gen.close()


# -- pipes ------------------------------------------------------------------------------------------


def test_read_stream_pipe_heartbeats_and_bad_bytes():
    r, w = os.pipe()
    stats = ReadStats()
    with os.fdopen(r, "rb") as fh:
        gen = read_stream(fh, stats, heartbeat=0.01, max_line_bytes=16)
        assert next(gen) is None  # nothing written yet: a heartbeat, not a block
        os.write(w, b"first\nsecond \xfe\n" + b"x" * 40 + b"\npartial")
        got = []
        while len(got) < 3:
            item = next(gen)
            if item is not None:
                got.append(item)
        os.close(w)
        rest = [x for x in gen if x is not None]
    assert got == ["first", "second \ufffd", "x" * 16]
    assert rest == ["partial"]
    assert stats.decode_errors == 1 and stats.truncated == 1


def test_read_stream_without_thread(tmp_path):
    path = tmp_path / "a.log"
    path.write_bytes(b"a\r\nb\n\nc")
    with open(path, "rb") as fh:
        assert list(read_stream(fh, heartbeat=None)) == ["a", "b", "", "c"]


def test_detect_summary_says_why_lines_were_skipped():
    from fusionlog.commands.detect import _why_skipped

    st = ReadStats(lines=10, unmatched_format=2, no_session_key=3, continuation=4).to_dict()
    assert _why_skipped(st) == " (unmatched format 2, no session key 3), 4 continuation lines"
    assert _why_skipped(ReadStats(lines=5).to_dict()) == ""
    assert _why_skipped(ReadStats(lines=9, continuation=4, exception_lines=2).to_dict()) == (
        ", 4 continuation lines, 2 trace lines naming an exception (read as events)")


def test_detect_summary_names_empty_and_damaged_files():
    from fusionlog.commands.detect import _files_read

    assert _files_read(dict(ReadStats().to_dict(), files=1)) == ""
    assert _files_read(dict(ReadStats().to_dict(), files=3)) == "3 files, "
    st = dict(ReadStats(empty_files=1, truncated_files=1).to_dict(), files=4)
    assert _files_read(st) == "4 files (1 empty, 1 damaged gzip read up to the damage), "


def test_detect_warns_once_when_the_lines_give_the_detector_nothing(caplog):
    """A log of another system reads without error (every line skipped) and no verdict ever comes: say so,
    once, early in a live stream, naming what the artifact expects."""
    import logging
    from types import SimpleNamespace

    from fusionlog.watch import FIT_CHECK_LINES, FitWatch

    rule = SessionRule("key", key_pattern=r"id=(\w+)")
    scorer = SimpleNamespace(rule=rule, log_format="<Level> <Content>", line_filter="")
    log = logging.getLogger("test.detect")
    sz = StreamSessionizer(len, rule, "<Level> <Content>", NO_TIMEOUTS)
    watch = FitWatch(sz, scorer, log)
    with caplog.at_level(logging.WARNING, logger="test.detect"):
        for line in watch.lines(["INFO no key on this line"] * (FIT_CHECK_LINES + 500)):
            sz.feed(line)
        watch.final()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"none of the {FIT_CHECK_LINES} lines" in warnings[0]
    assert "no session key 1000" in warnings[0] and "id=" in warnings[0]
    caplog.clear()
    sz = StreamSessionizer(len, rule, "<Level> <Content>", NO_TIMEOUTS)
    watch = FitWatch(sz, scorer, log)
    with caplog.at_level(logging.WARNING, logger="test.detect"):
        for line in watch.lines(["INFO no key", "INFO ok id=1"] * 600):
            sz.feed(line)
        watch.final()
    assert not caplog.records


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig"])
def test_follow_reads_a_file_with_a_byte_order_mark_as_file_reading_does(tmp_path, encoding):
    """PowerShell 5's `>` writes UTF-16 with a mark, Notepad UTF-8 with one: followed, such a file gives the
    lines `file_lines` gives, as it grows (a line split mid-character waits), from the end, and after a
    rotation to a file that is empty when opened."""
    bom = {"utf-16": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-8-sig": b"\xef\xbb\xbf"}[encoding]
    codec = {"utf-16": "utf-16-le", "utf-16-be": "utf-16-be", "utf-8-sig": "utf-8"}[encoding]
    path = tmp_path / "ps.log"
    stats = ReadStats()
    path.write_bytes(bom + "INFO start é\r\nWARN half".encode(codec))
    gen = follow(path, stats, stop=threading.Event(), poll_interval=0.001)
    assert _until_quiet(gen) == ["INFO start é"]
    rest = " done\r\nERROR x\r\n".encode(codec)
    with open(path, "ab") as fh:
        fh.write(rest[:3])  # a character cut in two
    assert _until_quiet(gen) == []
    with open(path, "ab") as fh:
        fh.write(rest[3:])
    assert _until_quiet(gen) == ["WARN half done", "ERROR x"]
    os.rename(path, tmp_path / "ps.log.1")
    path.write_bytes(b"")  # the new file is empty when the follower opens it
    assert _until_quiet(gen) + _until_quiet(gen) == []
    with open(path, "ab") as fh:
        fh.write(bom + "INFO after rotation\r\n".encode(codec))
    assert _until_quiet(gen) + _until_quiet(gen) == ["INFO after rotation"]
    assert stats.decode_errors == 0
    gen.close()
    from_end = follow(tmp_path / "ps.log.1", stop=threading.Event(), poll_interval=0.001, from_end=True)
    assert _until_quiet(from_end) == []
    with open(tmp_path / "ps.log.1", "ab") as fh:
        fh.write("INFO appended\r\n".encode(codec))
    assert _until_quiet(from_end) == ["INFO appended"]
    from_end.close()


def test_a_batch_reads_progress_bar_runs_over_the_bytes_on_disk_to_its_end(tmp_path):
    """`detect FILE...`'s bar: a plain file, an empty one and a gzip file (counted compressed), read as one
    stream: the bar moves with each block and ends at the files' size on disk, the lines all there."""
    import gzip
    import io

    from fusionlog.stream import ReadProgress, files_lines

    plain, empty, packed = tmp_path / "a.log.1", tmp_path / "b.log", tmp_path / "a.log.2.gz"
    plain.write_text("".join(f"plain line {i} {'x' * 40}\n" for i in range(20_000)), encoding="utf-8")
    empty.write_bytes(b"")
    with gzip.open(packed, "wt", encoding="utf-8") as fh:
        fh.write("".join(f"packed line {i}\n" for i in range(30_000)))
    files = [packed, plain, empty]
    shown = io.StringIO()
    progress = ReadProgress(files, show=True, file=shown, mininterval=0)
    seen: list[int] = []
    lines = 0
    for _ in files_lines(files, ReadStats(), None, progress):
        lines += 1
        if lines % 5_000 == 0:
            seen.append(progress.bar.n)
    total = sum(os.path.getsize(f) for f in files)
    assert lines == 50_000 and progress.bar.total == total and progress.bar.n == total
    assert seen == sorted(seen) and 0 < seen[0] < total  # it moved while reading, never back
    progress.close()
    assert "read:" in shown.getvalue()
    assert not ReadProgress(files, show=False).shown
