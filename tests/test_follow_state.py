"""`detect --follow --state FILE`: a restart goes on where a stop or a crash left it (`fusionlog.follow_state`)."""

from __future__ import annotations

import itertools
import json
import os
import threading

import pytest

from fusionlog.errors import ConfigError
from fusionlog.follow_state import CloseLog, FilePosition, FollowState, ResumeAt
from fusionlog.stream import (
    BLANK_CARRY,
    StreamCarry,
    StreamLimits,
    detect_stream,
    finished_verdicts,
    follow,
    scorer_sessionizer,
)
from tests.test_ingest import make_scorer, os_lines  # noqa: F401 - fixtures


class Crash(Exception):
    """The process dies here: nothing after this point runs (no final save, no flush)."""


def _seen(verdicts: list[dict]) -> list[tuple]:
    return sorted((v["key"], round(v["score"], 6), v["events"], v["first_line"]) for v in verdicts)


def _write(path, lines: list[str], mode: str = "a") -> None:
    with open(path, mode, encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))


def _until_quiet(gen) -> list[str]:
    out = []
    for item in gen:
        if item is None:
            return out
        out.append(item)
    return out


def test_a_follow_resumes_at_its_position_in_the_file_or_in_the_file_a_rotation_renamed(tmp_path):
    path = tmp_path / "app.log"
    path.write_bytes(b"one\ntwo\nthr")
    pos = FilePosition()
    gen = follow(path, stop=threading.Event(), poll_interval=0.001, position=pos)
    assert _until_quiet(gen) == ["one", "two"] and pos.now() == (8, 2, 2)  # "thr" waits for its newline
    gen.close()
    assert pos.now() == (8, 2, 2)  # ended: what it said stays
    with open(path, "ab") as fh:
        fh.write(b"ee\nfour\n")
    again = follow(path, stop=threading.Event(), poll_interval=0.001, position=FilePosition(),
                   resume=ResumeAt(str(path), *pos.now()[:2]))
    assert _until_quiet(again) == ["three", "four"]
    again.close()
    os.rename(path, tmp_path / "app.log.1")  # rotated while no follow ran
    path.write_bytes(b"five\n")
    pos2 = FilePosition()
    rotated = follow(path, stop=threading.Event(), poll_interval=0.001, position=pos2,
                     resume=ResumeAt(str(tmp_path / "app.log.1"), 8, 2))
    assert _until_quiet(rotated) + _until_quiet(rotated) == ["three", "four", "five"]
    assert (pos2.path, pos2.now()) == (str(path), (5, 1, 3))
    rotated.close()
    stop = threading.Event()  # a stop leaves an unterminated last line for the next run, whole
    path.write_bytes(b"five\nsi")
    cut = follow(path, stop=stop, poll_interval=0.001, position=FilePosition())
    assert next(cut) == "five" and next(cut) is None
    stop.set()
    assert list(cut) == []


class _Pinned:
    """What `FollowState` reads of a sessionizer: 10 lines read, one session open since line 1 (while `pinned`)."""

    line_no, open_sessions, pinned = 10, 1, True

    def oldest_open_line(self):
        return 1 if self.pinned else None

    def split_parts(self):
        return {}

    def carry(self):
        return BLANK_CARRY


def _wall_closed(state: FollowState, line: int, key: str) -> None:
    from fusionlog.stream import CLOSED_WALL_IDLE, FinishedSession

    state.finished(line, [FinishedSession(key, [1], None, None, CLOSED_WALL_IDLE)])


def test_wall_idle_closes_are_logged_beside_the_state_which_stays_small(tmp_path, monkeypatch):
    """The wall-idle closes since the mark go to FILE.closes, appended before their verdicts are written: the
    state's JSON does not grow with them while a session pins the mark. Once the mark passes them the log is
    rewritten without them; a torn last line (a crash mid-append) ends what a restart reads of it."""
    from fusionlog import follow_state

    monkeypatch.setattr(follow_state, "COMPACT_CLOSES", 3)
    path = tmp_path / "app.log"
    _write(path, [f"x {i}" for i in range(10)], "w")
    state = FollowState(tmp_path / "st.json", path, clock=itertools.count(0, 10).__next__)
    gen = follow(path, stop=threading.Event(), poll_interval=0.001, position=state.position)
    assert len(_until_quiet(gen)) == 10
    sz = _Pinned()
    log = CloseLog(tmp_path / "st.json.closes")
    for i in range(8):
        _wall_closed(state, 10, f"k{i}")
        state.recording(sz)
        state.settled(sz)  # the mark stays before line 1: every close is kept (the log rewritten at 4, with all)
    assert len(log.read(0)) == 8 and json.loads((tmp_path / "st.json").read_text())["closes"] == []
    sz.pinned, sz.open_sessions = False, 0
    state.settled(sz, final=True)  # nothing open: the mark moves to line 10, past every close
    assert log.path.exists() and log.read(0) == []
    log.append([(11, ["k9"])])
    with open(log.path, "a", encoding="utf-8") as fh:
        fh.write('12\t["k1')  # torn by a crash
    assert log.read(0) == [(11, ["k9"])]
    gen.close()
    state.close()


def test_closes_logged_after_a_torn_close_are_read_by_the_next_restart(tmp_path, caplog):
    """A crash tears the close log's last row; the restart logs more closes and dies too. The next restart reads
    every whole close (before, the restart appended onto the torn row, and the next one refused the log as
    damaged). A write the running process had cut short (a full disk; the closes go again at the next save) spoils
    only its own row: the next restart skips it and says so."""
    path = tmp_path / "app.log"
    _write(path, [f"x {i}" for i in range(10)], "w")
    log = CloseLog(tmp_path / "st.json.closes")

    def run(keys: list[str], cut_short: str = "") -> FollowState:
        state = FollowState(tmp_path / "st.json", path, clock=itertools.count(0, 10).__next__)
        gen = follow(path, stop=threading.Event(), poll_interval=0.001, position=state.position, resume=state.resume)
        assert len(_until_quiet(gen)) == 10  # from the top: the mark stays before the pinned session's line 1
        with open(log.path, "a", encoding="utf-8") as fh:
            fh.write(cut_short)
        for key in keys:
            _wall_closed(state, 10, key)
            state.recording(_Pinned())
        state.settled(_Pinned(), final=True)
        gen.close()
        state.close()
        return state

    run(["k0", "k1"])
    with open(log.path, "a", encoding="utf-8") as fh:
        fh.write('10\t["k2')  # the process dies mid-append
    assert run(["k3"]).replay_closes == {10: [["k0"], ["k1"]]}
    assert run([]).replay_closes == {10: [["k0"], ["k1"], ["k3"]]}
    assert [keys for _, keys in log.read(0)] == [["k0"], ["k1"], ["k3"]]
    run(["k4"], cut_short='10\t["k')  # written again whole after the cut row
    assert run([]).replay_closes == {10: [["k0"], ["k1"], ["k3"], ["k4"]]}
    assert "1 row(s) of" in caplog.text and "could not be read" in caplog.text


def test_the_state_benchmark_keeps_the_state_small_behind_a_pinned_mark(tmp_path):
    """`fusionlog bench state` (figures only): behind a mark one session pins, the state file is as large at 12
    wall-idle closes as at 302; the close log holds each of them (a session's key: 36 characters, quoted)."""
    from eval.bench_state import run

    small, large = run((10, 300), repeat=2, workdir=tmp_path)["rows"]
    assert (small["closes"], large["closes"]) == (12, 302) and small["state_bytes"] == large["state_bytes"]
    assert all(row["close_log_bytes"] >= 38 * row["closes"] for row in (small, large))


def test_a_utf16_file_resumes_by_its_lines(tmp_path):
    """A file in a marked encoding is read through a recoder, whose byte offsets are not the lines': resumed by
    counting lines."""
    path = tmp_path / "ps.log"
    path.write_bytes("\ufeffalpha\nbeta\n".encode("utf-16-le"))
    pos = FilePosition()
    gen = follow(path, stop=threading.Event(), poll_interval=0.001, position=pos)
    assert _until_quiet(gen) == ["alpha", "beta"] and pos.recoded and pos.now()[1:] == (2, 2)
    gen.close()
    with open(path, "ab") as fh:
        fh.write("gamma\n".encode("utf-16-le"))
    again = follow(path, stop=threading.Event(), poll_interval=0.001, position=FilePosition(),
                   resume=ResumeAt(str(path), *pos.now()[:2]))
    assert _until_quiet(again) == ["gamma"]
    again.close()


def _state_after(tmp_path, lines: list[str], name: str = "st.json", log: str = "app.log") -> FollowState:
    """A follow that read `lines` from `log` and saved its state with nothing open; the lock released."""
    path = tmp_path / log
    _write(path, lines, "w")
    state = FollowState(tmp_path / name, path)
    gen = follow(path, stop=threading.Event(), poll_interval=0.001, position=state.position)
    got = _until_quiet(gen)

    class Nothing:
        line_no, open_sessions = len(got), 0

        def carry(self):
            return BLANK_CARRY

        def oldest_open_line(self):
            return None

        def split_parts(self):
            return {}

    state.settled(Nothing(), final=True)
    gen.close()
    state.close()
    return state


def test_a_state_finds_its_file_refuses_another_and_starts_over_when_the_file_is_gone(tmp_path, caplog):
    path = tmp_path / "app.log"
    _state_after(tmp_path, ["a 1", "b 2"])
    saved = json.loads((tmp_path / "st.json").read_text())
    assert (saved["done"], saved["mark"]["offset"], saved["mark"]["line"]) == (2, 8, 2)
    held = FollowState(tmp_path / "st.json", path)
    assert held.resume == ResumeAt(str(path), 8, 2) and held.position.base == 2
    with pytest.raises(ConfigError, match=r"another detect uses it \(pid \d+\)"):
        FollowState(tmp_path / "st.json", path)
    held.close()
    old = {**saved, "mark": {**{k: v for k, v in saved["mark"].items() if k != "carry"}, "phase": 3},
           "closes": [[3, ["k"]]]}
    (tmp_path / "old.json").write_text(json.dumps(old), encoding="utf-8")
    read = FollowState(tmp_path / "old.json", path)  # a state of stop 28: the line-window phase alone, closes in it
    assert read.carry == StreamCarry(phase=3) and read.replay_closes == {3: [["k"]]}
    assert CloseLog(tmp_path / "old.json.closes").read(2) == [(3, ["k"])]  # kept where the next save looks
    read.close()
    damaged = {**saved, "mark": {**saved["mark"], "carry": {"log_now": "noon"}}}
    (tmp_path / "old.json").write_text(json.dumps(damaged), encoding="utf-8")
    with pytest.raises(ConfigError, match="damaged"):
        FollowState(tmp_path / "old.json", path)
    with pytest.raises(ConfigError, match="not .*other.log"):
        FollowState(tmp_path / "st.json", tmp_path / "other.log")
    os.rename(path, tmp_path / "app.log-20261128")  # rotated (dateext) while down
    moved = FollowState(tmp_path / "st.json", path)
    assert moved.resume == ResumeAt(str(tmp_path / "app.log-20261128"), 8, 2)
    moved.close()
    (tmp_path / "app.log-20261128").unlink()  # compressed away; a new file under the name, another inode
    path.write_text("x 1\ny 2\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        gone = FollowState(tmp_path / "st.json", path)
    assert gone.resume is None and gone.position.base == 2  # from the top, numbering going on
    assert "is gone or was rewritten; starting over" in caplog.text
    gone.close()
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="unreadable"):
        FollowState(tmp_path / "bad.json", path)
    with pytest.raises(ConfigError, match="is a directory"):
        FollowState(tmp_path, path)
    (tmp_path / "file").write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot write there"):
        FollowState(tmp_path / "file" / "st.json", path)


def test_a_file_name_that_is_not_utf8_is_saved_and_found_again(tmp_path):
    """A name of bytes that are not UTF-8 (held as surrogate escapes) is written to the state as escapes and read
    back as the same name: the restart resumes in the same file instead of failing to save."""
    name = os.fsdecode(b"bad\xff\xfe.log")
    _state_after(tmp_path, ["a 1", "b 2"], log=name)
    text = (tmp_path / "st.json").read_text(encoding="ascii")
    assert "\\udcff\\udcfe" in text
    again = FollowState(tmp_path / "st.json", tmp_path / name)
    assert again.resume == ResumeAt(str(tmp_path / name), 8, 2)
    again.close()


_GONE = object()  # a field taken out of the state


def _damaged(saved: dict, where: str, value) -> dict:
    """`saved` (a state's JSON) with the field at dotted `where` (`mark.offset`) set to `value` (or taken out)."""
    obj = json.loads(json.dumps(saved))
    *outer, last = where.split(".")
    inner = obj
    for key in outer:
        inner = inner[key]
    if value is _GONE:
        del inner[last]
    else:
        inner[last] = value
    return obj


#: (field, bad value, the field the error names): each field of a one-file state of the wrong type or out of range
DAMAGES = [
    ("followed", 5, "followed"), ("done", "x", "done"), ("done", -1, "done"), ("done", 1.5, "done"),
    ("done", True, "done"), ("done", _GONE, "done"), ("open_sessions", "x", "open_sessions"),
    ("open_sessions", -1, "open_sessions"), ("mark", None, "mark"), ("mark", "hello", "mark"), ("mark", _GONE, "mark"),
    ("mark.line", "x", "mark.line"), ("mark.line", 1.5, "mark.line"), ("mark.line", 3, "mark.line"),  # past done
    ("mark.path", 5, "mark.path"), ("mark.dev", "x", "mark.dev"), ("mark.ino", -1, "mark.ino"),
    ("mark.head_sha256", "zz", "mark.head_sha256"), ("mark.head_len", -1, "mark.head_len"),
    ("mark.head_len", 4096, "mark.head_len"), ("mark.offset", "abc", "mark.offset"), ("mark.offset", -5, "mark.offset"),
    ("mark.offset", _GONE, "mark.offset"), ("mark.file_line", None, "mark.file_line"), ("mark.phase", -1, "mark.phase"),
    ("mark.carry", [], "mark.carry"), ("mark.carry", {"phase": "x"}, "mark.carry"),
    ("mark.carry", {"log_now": "noon"}, "mark.carry"), ("closes", {"a": 1}, "closes"), ("closes", [[1]], "closes[0]"),
    ("closes", [["x", []]], "closes[0][0]"), ("closes", [[1, "k"]], "closes[0][1]"),
    ("closes", [[1, [5]]], "closes[0][1][0]"), ("cuts", "x", "cuts"), ("cuts", [[1]], "cuts[0]"),
    ("cuts", [[1, [["k"]]]], "cuts[0][1][0]"), ("cuts", [[1, [["k", -1]]]], "cuts[0][1][0][1]"),
    ("parts", [1, 2], "parts"), ("parts", {"k": "x"}, 'parts["k"]'), ("parts", {"k": -1}, 'parts["k"]'),
    ("ends", [["a", "b", "c"]], "ends[0][0]"), ("ends", [[1, 2, 3]], "ends[0][1]"), ("ends", [1], "ends[0]"),
]


def test_each_damaged_field_of_a_state_is_one_error_naming_the_file_and_the_field(tmp_path):
    """A state edited by hand: each field in turn of the wrong type or out of range gives one ConfigError naming
    the state file and the field (before: a TypeError or AttributeError traceback, or "Invalid argument" from a
    seek to `offset: -5`), and the state is not held after it (the lock is released)."""
    _state_after(tmp_path, ["a 1", "b 2"])
    st = tmp_path / "st.json"
    saved = json.loads(st.read_text(encoding="utf-8"))
    for where, value, named in DAMAGES:
        st.write_text(json.dumps(_damaged(saved, where, value)), encoding="utf-8")
        with pytest.raises(ConfigError) as err:
            FollowState(st, tmp_path / "app.log")
        assert str(err.value).startswith(f"--state {st}: damaged: field {named} is "), (where, value, str(err.value))
    st.write_text(json.dumps(saved), encoding="utf-8")
    FollowState(st, tmp_path / "app.log").close()  # undamaged, it is read (and no refused one holds the lock)


def _follow_run(scorer, path, state, sz, quiet, *, batch_size=256, take=None):
    """`detect_stream` over `follow(path)` with `state`; `quiet(k)` runs after the k-th empty poll was handled (it
    may append lines, step the clock, raise Crash or return True to stop). Returns the verdicts written."""
    stop = threading.Event()
    lines = follow(path, stop=stop, poll_interval=0.001, position=state.position, resume=state.resume)
    return steered_run(scorer, lines, stop, state, sz, quiet, batch_size=batch_size, take=take)


def steered_run(scorer, lines, stop, state, sz, quiet, *, batch_size=256, take=None) -> list[dict]:
    """`detect_stream` over `lines` (a follow that `stop` ends), `quiet(k)` run after its k-th empty poll; a Crash
    (from `quiet`, or after `take` verdicts) ends it as a killed process would. The verdicts written."""

    def steered():
        for k in itertools.count(1):
            for item in lines:
                yield item
                if item is None:
                    break
            else:
                return
            if quiet(k):
                stop.set()

    out = []
    try:
        for verdict in detect_stream(scorer, steered(), batch_size=batch_size, sessionizer=sz, checkpoint=state):
            out.append(verdict)
            if take is not None and len(out) == take:
                raise Crash
    except Crash:
        pass
    if state is not None:
        state.close()  # the process is gone: the kernel drops its lock
    return out


def test_a_crashed_follow_resumes_with_its_open_sessions_and_wall_closes_writing_none_twice(
        os_lines, make_scorer, tmp_path):  # noqa: F811
    """OpenStack instances followed from a file: some are closed by wall-clock idleness, others stay open across
    it; the process dies after its verdicts so far are written. The restart reads again from the oldest open
    instance's first line, closes what the earlier run closed where it did, and with a final flush the two runs
    wrote exactly the sessions and scores of one run that never stopped, none twice."""
    scorer = make_scorer()
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=30.0)
    wall = [0.0]
    path = tmp_path / "nova.log"
    _write(path, os_lines[:150], "w")
    ref = scorer_sessionizer(scorer, limits, clock=lambda: wall[0])  # one run that never stops
    done = ref.feed_many(os_lines[:150])
    wall[0] = 50.0
    done += ref.feed_many(os_lines[150:300])
    wall[0] = 70.0
    closed = ref.poll()
    done += closed
    wall[0] = 75.0
    done += ref.feed_many(os_lines[:300])
    whole = finished_verdicts(scorer, [*done, *ref.flush()])
    assert closed and ref.open_sessions == 0

    def first_run(k: int) -> None:
        if k == 1:  # the poll at 0 s closed nothing; then the next lines, at 50 s
            _write(path, os_lines[150:300])
            wall[0] = 50.0
        elif k == 2:  # the poll at 70 s closed the instances only the first lines touched
            _write(path, os_lines[:300])
            wall[0] = 75.0
        elif k == 3:
            raise Crash

    wall[0] = 0.0
    tick = itertools.count(0, 10).__next__  # the state's clock: every settle saves
    sz = scorer_sessionizer(scorer, limits, clock=lambda: wall[0])
    before = _follow_run(scorer, path, FollowState(tmp_path / "st.json", path, clock=tick), sz, first_run)
    assert sz.open_sessions > 0
    saved = json.loads((tmp_path / "st.json").read_text())
    assert saved["done"] == 600 and saved["open_sessions"] == sz.open_sessions
    assert saved["mark"]["line"] < sz.oldest_open_line() and saved["closes"] == []  # they are in the close log:
    assert [line for line, _ in CloseLog(tmp_path / "st.json.closes").read(0)] == [300]
    state = FollowState(tmp_path / "st.json", path, clock=tick)
    assert state.replay_through == 600 and sorted(state.replay_closes[300][0]) == sorted(s.key for s in closed)
    sz2 = scorer_sessionizer(scorer, limits, clock=lambda: 75.0)
    after = _follow_run(scorer, path, state, sz2, lambda k: True)  # a clean stop: open sessions stay open
    assert after == [] and sz2.open_sessions == sz.open_sessions
    assert json.loads((tmp_path / "st.json").read_text())["open_sessions"] == sz.open_sessions
    rest = finished_verdicts(scorer, sz2.flush())
    assert _seen(before + rest) == _seen(whole)


def test_verdicts_written_after_the_last_save_come_again_none_lost(os_lines, make_scorer, tmp_path):  # noqa: F811
    """Killed between writing a verdict and saving the state: that verdict is written again after the restart
    (at least once), every other one once."""
    scorer = make_scorer()
    limits = StreamLimits(idle_seconds=2.0, wall_idle_seconds=None)  # log-time idleness closes instances
    path = tmp_path / "nova.log"
    _write(path, os_lines, "w")
    ref = scorer_sessionizer(scorer, limits)
    whole = finished_verdicts(scorer, [*ref.feed_many(os_lines), *ref.flush()])
    tick = itertools.count(0, 10).__next__
    sz = scorer_sessionizer(scorer, limits)
    before = _follow_run(scorer, path, FollowState(tmp_path / "st.json", path, clock=tick), sz, lambda k: True,
                         batch_size=1, take=5)
    assert len(before) == 5
    sz2 = scorer_sessionizer(scorer, limits)
    after = _follow_run(scorer, path, FollowState(tmp_path / "st.json", path, clock=tick), sz2, lambda k: True)
    rest = finished_verdicts(scorer, sz2.flush())
    assert [t for t in _seen(after) if t in _seen(before)] == _seen(before[-1:])
    assert _seen(before[:-1] + after + rest) == _seen(whole)


def test_a_wall_idle_close_after_the_last_save_is_saved_before_its_verdicts(os_lines, make_scorer,  # noqa: F811
                                                                            tmp_path):
    """Sessions closed by wall-clock idleness, their verdicts written, and the process killed before the next
    periodic save: the close was saved before the verdicts, so the restart closes them at the same line and their
    verdicts come again alike; the instances' later lines start new sessions, as in the first run."""
    scorer = make_scorer()
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=30.0)
    wall = [0.0]
    path = tmp_path / "nova.log"
    _write(path, os_lines[:150], "w")

    def first_run(k: int) -> None:
        if k == 1:  # the poll at 0 s closed nothing; the next lines come at 50 s
            _write(path, os_lines[150:300])
            wall[0] = 50.0
        elif k == 2:  # the poll at 50 s closed the instances only the first lines touched; then the kill
            raise Crash

    saves = itertools.chain([0.0], itertools.repeat(0.5)).__next__  # no periodic save after the first
    sz = scorer_sessionizer(scorer, limits, clock=lambda: wall[0])
    before = _follow_run(scorer, path, FollowState(tmp_path / "st.json", path, clock=saves), sz, first_run)
    closed = [v for v in before if v["closed_by"] == "wall_idle"]
    # logged before the verdicts (the state itself was saved once, before the close)
    assert closed and [line for line, _ in CloseLog(tmp_path / "st.json.closes").read(0)] == [300]
    assert json.loads((tmp_path / "st.json").read_text())["done"] < 300

    def second_run(k: int) -> bool:
        if k == 1:
            _write(path, os_lines[:150])  # the closed instances log again
        return k >= 2

    sz2 = scorer_sessionizer(scorer, limits, clock=lambda: 60.0)
    after = _follow_run(scorer, path, FollowState(tmp_path / "st.json", path), sz2, second_run)
    after += finished_verdicts(scorer, sz2.flush())
    assert all(t in _seen(after) for t in _seen(closed))
    ref = scorer_sessionizer(scorer, limits, clock=lambda: wall[0])  # the same timeline, never stopped
    wall[0] = 0.0
    done = ref.feed_many(os_lines[:150])
    wall[0] = 50.0
    done += ref.feed_many(os_lines[150:300]) + ref.poll()
    wall[0] = 60.0
    done += ref.feed_many(os_lines[:150]) + ref.flush()
    assert set(_seen(before + after)) == set(_seen(finished_verdicts(scorer, done)))


def killed_in_chunks(scorer, new_sessionizer, lines: list[str], tmp_path, kill_at: int) -> tuple[list, dict, list]:
    """`lines` appended 7 at a time to a followed file with a state, the process killed once the chunk from line
    `kill_at` is written (before it is read), then a restart to the end and a flush. (The verdicts before the kill,
    the state the kill left, the verdicts after it.)"""
    path = tmp_path / "BGL.log"
    _write(path, lines[:7], "w")
    chunks = iter(range(7, len(lines), 7))

    def grow(k: int) -> bool:
        at = next(chunks, None)
        if at is None:
            return True
        _write(path, lines[at:at + 7])
        if at == kill_at:
            raise Crash
        return False

    tick = itertools.count(0, 10).__next__
    before = _follow_run(scorer, path, FollowState(tmp_path / "st.json", path, clock=tick), new_sessionizer(), grow)
    saved = json.loads((tmp_path / "st.json").read_text())
    sz = new_sessionizer()
    after = _follow_run(scorer, path, FollowState(tmp_path / "st.json", path, clock=tick), sz, grow)
    return before, saved, after + finished_verdicts(scorer, sz.flush())


def test_a_restart_mid_window_cuts_line_windows_where_the_first_run_did(bgl_artifact, data_dir, tmp_path):
    """BGL's 20-line windows, written 7 lines at a time: the resume mark falls inside a window. The restart counts
    on from the window phase saved with the mark, so its windows are the uninterrupted run's, not shifted."""
    from fusionlog.stream import load_scorer

    scorer = load_scorer(bgl_artifact)
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=None)
    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:100]
    ref = scorer_sessionizer(scorer, limits)
    whole = finished_verdicts(scorer, [*ref.feed_many(lines), *ref.flush()])
    before, saved, after = killed_in_chunks(scorer, lambda: scorer_sessionizer(scorer, limits), lines, tmp_path, 49)
    assert saved["mark"]["line"] % 20 and saved["mark"]["phase"] == saved["mark"]["line"] % 20  # mid-window
    assert [v["first_line"] for v in before + after] == [v["first_line"] for v in whole]
    assert _seen(before + after) == _seen(whole)


def test_a_restart_inside_a_line_window_the_size_limit_cut_keeps_the_windows_key_and_parts(bgl_artifact, data_dir,
                                                                                           tmp_path):
    """BGL's 20-line windows cut every 6 records (`--max-events 6`), written 7 lines at a time, killed at line 49: the
    resume mark (line 42) falls inside part 0 of the window that began at line 41, which the size limit closed after
    the mark. The replay opens its copy under that window's key (saved with the mark), not under a key of its own
    first line, so the cut and the later parts fall on the uninterrupted run's sessions."""
    from fusionlog.stream import load_scorer

    scorer = load_scorer(bgl_artifact)
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=None, max_events_per_session=6)
    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:100]
    ref = scorer_sessionizer(scorer, limits)
    whole = finished_verdicts(scorer, [*ref.feed_many(lines), *ref.flush()])
    assert {(v["key"], v["part"]) for v in whole if v["first_line"] in (41, 47)} == {("lines:41", 0), ("lines:41", 1)}
    before, saved, after = killed_in_chunks(scorer, lambda: scorer_sessionizer(scorer, limits), lines, tmp_path, 49)
    assert saved["mark"]["line"] == 42 and saved["mark"]["carry"]["window"] == "lines:41"
    assert set(_parts(before + after)) == set(_parts(whole))


def test_a_restart_where_the_logs_time_went_back_names_the_reopened_windows_as_the_first_run_did(
        bgl_artifact, data_dir, tmp_path):
    """Hour windows over BGL's first 60 lines and then a copy of its first 30 (time goes back: the copy's windows are
    `time:B.1` ... `time:B.11`), written 7 lines at a time, killed at line 84. The mark (line 77) falls inside the
    copy's window 76-78. The replay names that window, and those after it, as the first run did: from the window,
    the latest bucket and the count of reopened windows saved with the mark (a blank replay named them `time:B`
    and counted from 1 again)."""
    from fusionlog.config import SessionRule
    from fusionlog.stream import StreamSessionizer, load_scorer

    scorer = load_scorer(bgl_artifact)
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=None)

    def hours() -> StreamSessionizer:
        return StreamSessionizer(scorer.event_id, SessionRule("time", seconds=3600.0), scorer.log_format, limits)

    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:60]
    lines += lines[:30]
    ref = hours()
    whole = finished_verdicts(scorer, [*ref.feed_many(lines), *ref.flush()])
    again = [(v["first_line"], v["key"].partition(".")[2]) for v in whole if "." in v["key"]]
    assert again == list(zip([61, 65, 68, 69, 71, 72, 76, 79, 85, 88, 89], map(str, range(1, 12)), strict=True))
    before, saved, after = killed_in_chunks(scorer, hours, lines, tmp_path, 84)
    assert (saved["mark"]["line"], saved["done"]) == (77, 84) and saved["mark"]["carry"]["window"].endswith(".7")
    assert saved["mark"]["carry"]["again"] == 7
    assert _parts(before + after) == _parts(whole)


def test_no_mark_falls_between_the_chunks_of_a_line_the_runtime_split(tmp_path):
    """Docker's json-file log, a session a record (nothing stays open): a 40 KiB line split into 16 KiB chunks comes
    one chunk at a time. While a chunk is held the mark stays before it, so a restart after a crash there reads the
    whole line again and has its record (a mark after the held chunk read the last one alone: no record, no key)."""
    import json as _json

    from fusionlog.config import SessionRule
    from fusionlog.stream import StreamSessionizer
    from tests.test_containers import _runtime_time

    big = "order=2 failed: " + "x" * 40_000
    chunks = [big[i:i + 16_384] for i in range(0, len(big), 16_384)]
    texts = ["order=1 placed", *chunks, "order=3 placed"]
    rows = [_json.dumps({"log": t + ("" if 1 <= i < len(chunks) else "\n"), "stream": "stdout",
                         "time": _runtime_time(i)}) for i, t in enumerate(texts)]
    path = tmp_path / "app-json.log"
    _write(path, [], "w")

    def sessionizer() -> StreamSessionizer:
        return StreamSessionizer(len, SessionRule("key", key_pattern=r"order=(\d+)"), "docker:<Content>",
                                 StreamLimits(max_events_per_session=1, idle_seconds=None))

    tick = itertools.count(0, 10).__next__  # every settle marks and saves
    state = FollowState(tmp_path / "st.json", path, clock=tick)
    gen = follow(path, stop=threading.Event(), poll_interval=0.001, position=state.position)
    sz, marks = sessionizer(), []
    for row in rows[:3]:  # the first record, then two chunks held: the kill comes before the last chunk
        _write(path, [row])
        for line in _until_quiet(gen):
            sz.feed(line)
        state.settled(sz)
        marks.append(json.loads((tmp_path / "st.json").read_text())["mark"]["line"])
    assert sz.open_sessions == 0 and sz.oldest_open_line() == 2 and marks == [1, 1, 1]
    gen.close()
    state.close()
    _write(path, rows[3:])
    state = FollowState(tmp_path / "st.json", path)
    gen = follow(path, stop=threading.Event(), poll_interval=0.001, position=state.position, resume=state.resume)
    again = sessionizer()
    again.start_at(state.position.base, state.carry)
    got = [(s.key, s.first_line) for line in _until_quiet(gen) for s in again.feed(line)]
    assert got == [("2", 4), ("3", 5)] and again.oldest_open_line() is None
    gen.close()
    state.close()


def test_an_exception_line_after_a_mark_joins_the_record_before_the_mark(tmp_path):
    """A record fills its session (2 events, closed by size) and nothing stays open, so the mark moves past it;
    the process dies before the Java trace under that record is written. The restart gives the trace's exception
    line to that record's key, as one run that never stopped did (before the trace tail was in the mark's carry,
    the restart read the exception line under no record: the event and its session were lost)."""
    from fusionlog.config import SessionRule
    from fusionlog.stream import StreamSessionizer

    head = ["2024-01-01 00:20:00 [main] start id=b", "2024-01-01 00:20:01 [main] failed id=b"]
    rest = ["java.io.IOException: Connection reset", "\tat a.b.C.run(C.java:1)",
            "2024-01-01 00:20:05 [main] retry id=b"]
    path = tmp_path / "app.log"
    _write(path, head, "w")

    def sessionizer() -> StreamSessionizer:
        return StreamSessionizer(len, SessionRule("key", key_pattern=r"id=(\w+)"),
                                 r"<Date> <Time> \[<Thread>\] <Content>",
                                 StreamLimits(max_events_per_session=2, idle_seconds=None))

    def sessions(sz: StreamSessionizer, lines: list[str]) -> list[tuple]:
        return [(s.key, s.part, len(s.event_ids), s.first_line) for s in [*sz.feed_many(lines), *sz.flush()]]

    state = FollowState(tmp_path / "st.json", path, clock=itertools.count(0, 10).__next__)
    gen = follow(path, stop=threading.Event(), poll_interval=0.001, position=state.position)
    sz = sessionizer()
    assert [s.closed_by for line in _until_quiet(gen) for s in sz.feed(line)] == ["size"]
    state.settled(sz)
    assert json.loads((tmp_path / "st.json").read_text())["mark"]["line"] == 2
    gen.close()
    state.close()
    _write(path, rest)
    state = FollowState(tmp_path / "st.json", path)
    gen = follow(path, stop=threading.Event(), poll_interval=0.001, position=state.position, resume=state.resume)
    again = sessionizer()
    again.start_at(state.position.base, state.carry)
    again.expect_parts(state.replay_parts)
    got = sessions(again, _until_quiet(gen))
    assert got == sessions(sessionizer(), [*head, *rest])[1:] == [("b", 1, 2, 3)]
    gen.close()
    state.close()


def interleaved(lines: list[str], order: str) -> list[str]:
    """OpenStack lines of several instances in a chosen order: `order`'s letter k is the next line of the k-th
    instance (by first appearance in `lines`)."""
    import re

    from fusionlog.data.registry import INSTANCE_KEY

    by: dict[str, list[str]] = {}
    for line in lines:
        if m := re.search(INSTANCE_KEY, line):
            by.setdefault(m.group(1), []).append(line)
    queues = {chr(ord("A") + i): iter(v) for i, v in enumerate(by.values())}
    return [next(queues[c]) for c in order]


def _parts(verdicts: list[dict]) -> list[tuple]:
    return sorted((v["key"], v["part"], v["first_line"], v["events"], round(v["score"], 6)) for v in verdicts)


def test_a_session_split_by_the_size_limit_after_the_mark_is_split_where_it_was(os_lines, make_scorer,  # noqa: F811
                                                                                tmp_path):
    """At most 3 events a session. Instance C opens at line 4, before the resume mark (line 7), and fills up at
    line 10, after it: the restart's copy of it holds 2 events there, so without the saved size close it would take
    C's later lines and split them elsewhere. Instance A, split before the mark, logs again at the end: its part
    number goes on (the saved part numbers). The two runs write the uninterrupted run's sessions, parts included."""
    scorer = make_scorer()
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=None, max_events_per_session=3)
    lines = interleaved(os_lines, "AAACBBBDCCEEECCCA")  # D (line 8) stays open: the mark stays before it
    path = tmp_path / "nova.log"
    _write(path, lines, "w")
    ref = scorer_sessionizer(scorer, limits)
    whole = finished_verdicts(scorer, [*ref.feed_many(lines), *ref.flush()])
    assert [(v["first_line"], v["part"]) for v in whole if v["closed_by"] == "size"] == [
        (1, 0), (5, 0), (4, 0), (11, 0), (14, 1)]
    tick = itertools.count(0, 10).__next__
    before = _follow_run(scorer, path, FollowState(tmp_path / "st.json", path, clock=tick),
                         scorer_sessionizer(scorer, limits), lambda k: True, batch_size=1, take=4)
    saved = json.loads((tmp_path / "st.json").read_text())
    # E's size close at line 13 (its verdict written, then the kill) is not saved: E began after the mark, and the
    # replay fills it up by itself
    assert (saved["mark"]["line"], saved["done"]) == (7, 10) and [c[0] for c in saved["cuts"]] == [10]
    assert list(saved["parts"].values()) == [1, 1, 1]  # A, B and C were split
    sz = scorer_sessionizer(scorer, limits)
    after = _follow_run(scorer, path, FollowState(tmp_path / "st.json", path, clock=tick), sz, lambda k: True)
    rest = finished_verdicts(scorer, sz.flush())
    assert set(_parts(before + after + rest)) == set(_parts(whole))
    assert [v["part"] for v in rest if v["first_line"] == 17] == [1]


def test_a_continuation_closed_by_wall_idleness_after_the_last_save_keeps_its_part(os_lines, make_scorer,  # noqa: F811
                                                                                    tmp_path):
    """Instance A fills up at line 3 (before the resume mark); its continuation (part 1, line 4) is closed by
    wall-clock idleness at line 5, after the last save, and the kill comes after its verdict. The close is in the
    close log, the state holds A's next part as it was saved (1): the restart's copy of the continuation is part 1
    again, closed at line 5, and its verdict comes again alike."""
    scorer = make_scorer()
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=30.0, max_events_per_session=3)
    lines = interleaved(os_lines, "AAAAB")
    wall = [0.0]
    path = tmp_path / "nova.log"
    _write(path, lines[:3], "w")

    def first_run(k: int) -> None:
        if k == 1:
            _write(path, lines[3:4])  # A's continuation, at 0 s
        elif k == 2:
            _write(path, lines[4:5])  # B, at 50 s: the next poll closes A's continuation, not B
            wall[0] = 50.0

    tick = itertools.count(0, 10).__next__
    before = _follow_run(scorer, path, FollowState(tmp_path / "st.json", path, clock=tick),
                         scorer_sessionizer(scorer, limits, clock=lambda: wall[0]), first_run, batch_size=1, take=2)
    assert [(v["part"], v["first_line"], v["closed_by"]) for v in before] == [(0, 1, "size"), (1, 4, "wall_idle")]
    saved = json.loads((tmp_path / "st.json").read_text())
    assert saved["mark"]["line"] == 3 and saved["done"] == 4 and saved["parts"] == {before[1]["key"]: 1}
    assert CloseLog(tmp_path / "st.json.closes").read(3) == [(5, [before[1]["key"]])]
    sz = scorer_sessionizer(scorer, limits, clock=lambda: 50.0)
    after = _follow_run(scorer, path, FollowState(tmp_path / "st.json", path, clock=tick), sz, lambda k: True)
    assert _parts(after) == _parts(before[1:])


def _detect(model, log, *extra):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "fusionlog.cli", "detect", "--model", str(model), str(log),
                             "--wall-idle-seconds", "0", "--poll-interval", "0.05", *extra],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _wait(what, proc, timeout: float = 180.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"detect exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if got := what():
            return got
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


def _verdicts(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


@pytest.mark.slow
def test_kill_9_and_a_rotation_while_down_lose_no_window_and_write_none_twice(bgl_artifact, data_dir, tmp_path):
    """A real `detect --follow --state` killed with SIGKILL while a 20-line BGL window was half full; before the
    restart the file gets 10 more lines and is rotated, a new file starting under its name, and the output ends in
    a line the kill cut. The restart cuts that line, reads the rotated file's rest and the new file: its windows,
    appended to the same output, are the batch detector's over all the lines, none twice; a SIGTERM leaves the
    last, half-full window open for the next run."""
    import signal

    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:90]
    (tmp_path / "all.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    batch = _detect(bgl_artifact, tmp_path / "all.log")
    ref = [json.loads(line) for line in batch.communicate(timeout=300)[0].splitlines()]
    assert [v["events"] for v in ref] == [20, 20, 20, 20, 10]
    log, state, out = tmp_path / "BGL.log", tmp_path / "bgl.state", tmp_path / "verdicts.jsonl"
    _write(log, lines[:50], "w")
    proc = _detect(bgl_artifact, log, "--follow", "--state", str(state), "-o", str(out))
    _wait(lambda: state.exists() and json.loads(state.read_text())["done"] == 50, proc)
    proc.kill()  # SIGKILL: nothing more runs
    proc.wait(timeout=60)
    assert len(_verdicts(out)) == 2 and json.loads(state.read_text())["open_sessions"] == 1
    with open(out, "a", encoding="utf-8") as fh:
        fh.write('{"key": "lines:41", "score": 0.')  # a verdict the kill cut mid-write (its line comes again)
    _write(log, lines[50:60])
    os.rename(log, tmp_path / "BGL.log.1")
    _write(log, lines[60:], "w")
    proc = _detect(bgl_artifact, log, "--follow", "--state", str(state), "-o", str(out))
    _wait(lambda: json.loads(state.read_text())["done"] == 90 and len(_verdicts(out)) == 4, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "now BGL.log.1: rotated since" in err and "1 open session(s) left open for the next run" in err
    assert "cut a torn last line (31 bytes) a killed run left" in err
    got = _verdicts(out)
    assert [(v["key"], v["events"], round(v["score"], 6)) for v in got] == [
        (v["key"], v["events"], round(v["score"], 6)) for v in ref[:4]]
    assert json.loads(state.read_text())["open_sessions"] == 1


def test_a_followed_link_is_found_where_its_target_was_rotated(tmp_path):
    """Kubernetes: `/var/log/containers/x.log` links to `/var/log/pods/.../0.log`, which the kubelet rotates to
    `0.log.<date>` beside it. A restart finds where it stopped in the rotated target."""
    from fusionlog.follow_state import locate

    pods, containers = tmp_path / "pods" / "ns_pod_uid" / "app", tmp_path / "containers"
    pods.mkdir(parents=True)
    containers.mkdir()
    (pods / "0.log").write_bytes(b"one\ntwo\n")
    link = containers / "pod_ns_app-123.log"
    link.symlink_to(pods / "0.log")
    pos = FilePosition()
    gen = follow(link, stop=threading.Event(), poll_interval=0.001, position=pos)
    assert _until_quiet(gen) == ["one", "two"]
    mark = pos.mark()
    gen.close()
    os.rename(pods / "0.log", pods / "0.log.20261128-120000")
    (pods / "0.log").write_bytes(b"three\n")
    assert locate(mark, link) == pods / "0.log.20261128-120000"
