"""`detect --follow DIR --state FILE`: a folder's follow goes on after a crash as if it never stopped
(`fusionlog.folder_state`)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import threading

import pytest

import fusionlog.io
from fusionlog import folder_state
from fusionlog.errors import ConfigError
from fusionlog.folder_state import FolderFollowState, TurnFile
from fusionlog.multifollow import MultiFollow
from fusionlog.stream import BLANK_CARRY, StreamCarry, StreamLimits, finished_verdicts, scorer_sessionizer
from tests.test_follow_state import Crash, _parts, _seen, _until_quiet, _write, interleaved, steered_run
from tests.test_ingest import make_scorer, os_lines  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def all_os_lines(data_dir) -> list[str]:
    from fusionlog.data.readers import iter_lines

    return [line for _, line in iter_lines(data_dir / "loghub2k/OpenStack/OpenStack_2k.log")]


def _split_by_instance(lines: list[str]) -> tuple[list[str], list[str]]:
    """Nova's lines of every other instance in one file, the rest in another: a session gathers from both."""
    from fusionlog.data.registry import INSTANCE_KEY

    keyed = [(m.group(1) if (m := re.search(INSTANCE_KEY, line)) else "", line) for line in lines]
    keys = sorted({k for k, _ in keyed if k})
    left = {k for i, k in enumerate(keys) if i % 2 == 0}
    return [ln for k, ln in keyed if k in left], [ln for k, ln in keyed if k and k not in left]


def _folder_run(scorer, sources, state, sz, quiet, *, batch_size=256, take=None) -> list[dict]:
    """`detect_stream` over a `MultiFollow` of `sources` (with `state`, or none); `quiet(k)` runs after the k-th
    empty poll (it may write lines, step the clock, raise Crash or return True to stop). The verdicts written."""
    stop = threading.Event()
    mf = MultiFollow(sources, stop=stop, poll_interval=0.001, clock=lambda: 0.0,
                     keep_position=state is not None, resume=state.resume_folder if state is not None else None)
    if state is not None:
        state.attach(mf)
    mf.on_turn = sz.from_file  # as `detect` hooks them up
    return steered_run(scorer, iter(mf), stop, state, sz, quiet, batch_size=batch_size, take=take)


def test_a_crashed_folder_follow_resumes_its_interleaved_sessions_across_a_rotation_writing_none_twice(
        all_os_lines, make_scorer, tmp_path):  # noqa: F811
    """OpenStack instances whose lines are split over two files, written in three rounds while followed: some
    instances are closed by wall-clock idleness, others stay open. The process dies; while it is down one file
    is rotated under a dated name (a live name in a folder) and a new one begun. The restart reads the two files
    again from the oldest open instance in the order the first run read them, does not take the rotated file for
    a new one, reads the new file, and the two runs plus a final flush wrote exactly the sessions and scores of
    one run that never stopped, none twice."""
    scorer = make_scorer()
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=30.0)
    a, b = _split_by_instance(all_os_lines)
    logs = tmp_path / "logs"
    logs.mkdir()
    wall = [0.0]

    def begin() -> None:
        for name in ("a.log", "b.log", "a.log-20261128"):
            (logs / name).unlink(missing_ok=True)
        _write(logs / "a.log", a[:200], "w")
        _write(logs / "b.log", b[:200], "w")
        wall[0] = 0.0

    def rotate() -> None:
        os.rename(logs / "a.log", logs / "a.log-20261128")
        _write(logs / "a.log", a[:30], "w")  # the new file: instances seen before come back (a later session)

    def rounds(k: int, crash: bool) -> bool:
        if k == 1:  # the poll at 0 s closed nothing; more lines of both files, at 50 s
            _write(logs / "a.log", a[200:400])
            _write(logs / "b.log", b[200:400])
            wall[0] = 50.0
        elif k == 2:  # the poll at 50 s closed the instances only the first lines touched
            _write(logs / "b.log", b[:100])
            wall[0] = 75.0
        elif k == 3:
            if crash:
                raise Crash
            rotate()
        return k >= 4

    begin()
    ref = scorer_sessionizer(scorer, limits, clock=lambda: wall[0])
    whole = _folder_run(scorer, [str(logs)], None, ref, lambda k: rounds(k, crash=False))
    whole += finished_verdicts(scorer, ref.flush())
    assert any(v["closed_by"] == "wall_idle" for v in whole) and len(whole) >= 15

    begin()
    tick = itertools.count(0, 10).__next__  # the state's clock: every settle saves
    st = tmp_path / "st.json"
    sz = scorer_sessionizer(scorer, limits, clock=lambda: wall[0])
    before = _folder_run(scorer, [str(logs)], FolderFollowState(st, [str(logs)], clock=tick), sz,
                         lambda k: rounds(k, crash=True))
    saved = json.loads(st.read_text(encoding="utf-8"))
    assert sz.open_sessions > 0 and saved["open_sessions"] == sz.open_sessions
    assert saved["done"] == len(a) + len(b) + 100 and saved["mark"]["line"] < sz.oldest_open_line()
    assert sorted(os.path.basename(p) for p in saved["starts"]) == ["a.log", "b.log"]
    assert TurnFile.read(tmp_path / "st.json.turns", saved["mark"]["line"])[0][-1][1] == saved["done"]
    rotate()
    first = FolderFollowState(st, [str(logs)], clock=tick)
    first.close()  # killed again before its first save: the next restart replays the same
    state = FolderFollowState(st, [str(logs)], clock=tick)
    assert state.resume_folder == first.resume_folder and len(state.resume_folder.turns) >= 2
    assert state.replay_through == saved["done"] and state.position.base == saved["mark"]["line"]
    sz2 = scorer_sessionizer(scorer, limits, clock=lambda: 75.0)
    after = _folder_run(scorer, [str(logs)], state, sz2, lambda k: True)  # a clean stop: open sessions stay open
    assert json.loads(st.read_text(encoding="utf-8"))["done"] == saved["done"] + 30
    rest = finished_verdicts(scorer, sz2.flush())
    assert _seen(before + after + rest) == _seen(whole)
    with pytest.raises(ConfigError, match="not a follow state|state of"):
        FolderFollowState(st, [str(logs / "*.log")])


def test_verdicts_written_after_the_last_save_come_again_alike(  # noqa: F811
        all_os_lines, make_scorer, tmp_path, monkeypatch):  # noqa: F811
    """Killed after verdicts written since the last save of the state: the restart reads their lines again in the
    order the first run read them (recorded before each write), so they come again exactly alike (at least once),
    though a live read would now interleave the two files otherwise (short turns here)."""
    from fusionlog import multifollow

    monkeypatch.setattr(multifollow, "TURN_LINES", 7)
    scorer = make_scorer()
    limits = StreamLimits(idle_seconds=2.0, wall_idle_seconds=None)  # log-time idleness closes instances
    a, b = _split_by_instance(all_os_lines)
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "a.log", a, "w")
    _write(logs / "b.log", b, "w")
    st = tmp_path / "st.json"
    saves = itertools.chain([0.0], itertools.repeat(0.5)).__next__  # the state is saved once, at the first settle
    sz = scorer_sessionizer(scorer, limits)
    before = _folder_run(scorer, [str(logs)], FolderFollowState(st, [str(logs)], clock=saves), sz, lambda k: True,
                         batch_size=1, take=12)
    saved = json.loads(st.read_text(encoding="utf-8"))
    assert len(before) == 12 and saved["done"] < before[-1]["last_line"]
    sz2 = scorer_sessionizer(scorer, limits)
    after = _folder_run(scorer, [str(logs)], FolderFollowState(st, [str(logs)]), sz2, lambda k: True)
    rest = finished_verdicts(scorer, sz2.flush())
    written, late = before[:1], before[1:]  # the save came right after the first verdict
    assert all(t in _seen(after) for t in _seen(late))  # again, alike
    assert not [t for t in _seen(after) if t in _seen(written)]  # the saved one not again
    assert sum(v["events"] for v in written + after + rest) == len(a) + len(b)  # every line in one session


def test_a_size_close_after_the_mark_and_split_parts_are_replayed_across_files(os_lines, make_scorer,  # noqa: F811
                                                                               tmp_path):
    """The one-file case of `tests.test_follow_state` over two files written in rounds: instance C (a.log) opens
    before the mark and fills up after it, A (a.log) was split before the mark and logs again later. The kill comes
    after C's verdict and E's (b.log). The runs write the uninterrupted run's sessions, parts included."""
    scorer = make_scorer()
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=None, max_events_per_session=3)
    lines = interleaved(os_lines, "AAACBBBDCCEEECCCA")
    rounds = [("a.log", lines[:4]), ("b.log", lines[4:8]), ("a.log", lines[8:10]), ("b.log", lines[10:13]),
              ("a.log", lines[13:])]
    logs = tmp_path / "logs"

    def begin() -> None:
        logs.mkdir(exist_ok=True)
        for name in ("a.log", "b.log"):
            (logs / name).write_text("", encoding="utf-8")
        _write(logs / rounds[0][0], rounds[0][1])

    def write_round(k: int) -> bool:
        if k < len(rounds):
            _write(logs / rounds[k][0], rounds[k][1])
        return k >= len(rounds)

    begin()
    ref = scorer_sessionizer(scorer, limits)
    whole = _folder_run(scorer, [str(logs)], None, ref, write_round) + finished_verdicts(scorer, ref.flush())
    assert [v["first_line"] for v in whole if v["closed_by"] == "size"] == [1, 5, 4, 11, 14]
    begin()
    st = tmp_path / "st.json"
    tick = itertools.count(0, 10).__next__
    before = _folder_run(scorer, [str(logs)], FolderFollowState(st, [str(logs)], clock=tick),
                         scorer_sessionizer(scorer, limits), write_round, batch_size=1, take=4)
    saved = json.loads(st.read_text(encoding="utf-8"))
    assert (saved["mark"]["line"], saved["done"]) == (7, 10) and [c[0] for c in saved["cuts"]] == [10]
    write_round(4)  # while it is down
    state = FolderFollowState(st, [str(logs)], clock=tick)
    assert sorted(state.replay_cuts) == [10] and len(state.resume_folder.turns) >= 2
    sz = scorer_sessionizer(scorer, limits)
    after = _folder_run(scorer, [str(logs)], state, sz, lambda k: True)
    rest = finished_verdicts(scorer, sz.flush())
    assert set(_parts(before + after + rest)) == set(_parts(whole))


def test_a_folder_restart_inside_a_line_window_the_size_limit_cut_keeps_the_windows_key(bgl_artifact, data_dir,
                                                                                        tmp_path):
    """The one-file case of `tests.test_follow_state` (20-line windows cut every 6 records, killed at line 49) over
    two nodes' files written 7 lines at a time in turn: the folder state's mark carries the window in progress, and
    the runs write the uninterrupted run's sessions, keys and parts included."""
    from fusionlog.stream import load_scorer

    scorer = load_scorer(bgl_artifact)
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=None, max_events_per_session=6)
    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:100]
    logs = tmp_path / "nodes"
    crash_at: list[int] = []  # the round whose lines the kill comes after

    def begin() -> None:
        logs.mkdir(exist_ok=True)
        _write(logs / "a.log", lines[:7], "w")
        _write(logs / "b.log", [], "w")

    def write_round(k: int) -> bool:
        at = 7 * k
        if at >= len(lines):
            return True
        _write(logs / ("ab"[k % 2] + ".log"), lines[at:at + 7])
        if crash_at == [at]:
            crash_at.clear()
            raise Crash
        return False

    begin()
    ref = scorer_sessionizer(scorer, limits)
    whole = _folder_run(scorer, [str(logs)], None, ref, write_round) + finished_verdicts(scorer, ref.flush())
    assert {(v["key"], v["part"]) for v in whole if v["first_line"] in (41, 47)} == {("lines:41", 0), ("lines:41", 1)}
    begin()
    crash_at.append(49)
    st, tick = tmp_path / "st.json", itertools.count(0, 10).__next__
    before = _folder_run(scorer, [str(logs)], FolderFollowState(st, [str(logs)], clock=tick),
                         scorer_sessionizer(scorer, limits), write_round)
    saved = json.loads(st.read_text(encoding="utf-8"))
    carry = saved["mark"]["carry"]
    assert saved["mark"]["line"] == 42 and (carry["phase"], carry["window"], carry["tail_line"]) == (2, "lines:41", "")
    rounds = itertools.count(8)
    sz = scorer_sessionizer(scorer, limits)
    after = _folder_run(scorer, [str(logs)], FolderFollowState(st, [str(logs)], clock=tick), sz,
                        lambda k: write_round(next(rounds)))
    rest = finished_verdicts(scorer, sz.flush())
    assert set(_parts(before + after + rest)) == set(_parts(whole))


def test_a_file_first_read_after_the_last_save_is_read_again_in_its_turns(os_lines, make_scorer,  # noqa: F811
                                                                          tmp_path):
    """b.log appears, and is first read, after the state's last save; sessions gathering lines of both files are
    written, a.log grows and is read again, then the kill. The turn file says where b.log began, so the restart reads
    both files again in the order the first run did (before, the replay stopped at b.log's first turn and read the
    rest in another order, building other sessions). The runs write the uninterrupted run's sessions."""
    scorer = make_scorer()
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=None, max_events_per_session=3)
    lines = interleaved(os_lines, "ABABABABABABABABAB")
    logs = tmp_path / "logs"

    def begin() -> None:
        for name in ("a.log", "b.log"):
            (logs / name).unlink(missing_ok=True)
        logs.mkdir(exist_ok=True)
        _write(logs / "a.log", lines[:7], "w")

    def run(state, sz, quiet, take=None) -> list[dict]:
        stop, now = threading.Event(), [0.0]
        mf = MultiFollow([str(logs)], stop=stop, poll_interval=0.001, clock=lambda: now[0], rescan=5.0,
                         keep_position=state is not None, resume=state.resume_folder if state is not None else None)
        if state is not None:
            state.attach(mf)

        def rescanning(k: int) -> bool:
            now[0] += 10.0  # the next poll looks for new files
            return quiet(k)

        return steered_run(scorer, iter(mf), stop, state, sz, rescanning, batch_size=1, take=take)

    def rounds(k: int, crash: bool) -> bool:
        if k == 1:
            _write(logs / "b.log", lines[7:13], "w")  # a new file
        elif k == 2:
            _write(logs / "a.log", lines[13:])
        elif k == 3 and crash:
            raise Crash
        return k >= 4

    begin()
    ref = scorer_sessionizer(scorer, limits)
    whole = run(None, ref, lambda k: rounds(k, crash=False)) + finished_verdicts(scorer, ref.flush())
    assert len(whole) == 6
    begin()
    st = tmp_path / "st.json"
    saves = itertools.chain([0.0], itertools.repeat(0.5)).__next__  # no save after the first
    sz = scorer_sessionizer(scorer, limits)
    before = run(FolderFollowState(st, [str(logs)], clock=saves), sz, lambda k: rounds(k, crash=True))
    saved = json.loads(st.read_text(encoding="utf-8"))
    assert saved["done"] < 13 and [os.path.basename(p) for p in saved["starts"]] == ["a.log"]
    assert any(v["first_line"] > saved["done"] for v in before)  # written after the last save
    sz2 = scorer_sessionizer(scorer, limits)
    after = run(FolderFollowState(st, [str(logs)]), sz2, lambda k: k >= 2)
    rest = finished_verdicts(scorer, sz2.flush())
    assert set(_parts(before + after + rest)) == set(_parts(whole))


def test_a_folder_state_whose_file_is_gone_goes_on_from_each_files_place(  # noqa: F811
        os_lines, make_scorer, tmp_path, caplog):  # noqa: F811
    """A file the replay needs was deleted while the detector was down: the open sessions cannot be rebuilt.
    The restart says so and how many were lost, and goes on from where each remaining file stopped: no line
    read twice, none skipped."""
    scorer = make_scorer()
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=None)
    a, b = _split_by_instance(os_lines)
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "a.log", a[:50], "w")
    _write(logs / "b.log", b[:50], "w")
    st = tmp_path / "st.json"
    tick = itertools.count(0, 10).__next__
    sz = scorer_sessionizer(scorer, limits)
    _folder_run(scorer, [str(logs)], FolderFollowState(st, [str(logs)], clock=tick), sz, lambda k: True)
    assert sz.open_sessions > 0
    os.remove(logs / "a.log")
    _write(logs / "b.log", b[50:60])
    with caplog.at_level(logging.WARNING, logger="fusionlog.folder_state"):
        state = FolderFollowState(st, [str(logs)], clock=tick)
    assert f"{sz.open_sessions} open session(s) lost" in caplog.text and "a.log" in caplog.text
    assert state.position.base == 100 and not state.replay_through
    seen: list[str] = []
    sz2 = scorer_sessionizer(scorer, limits)
    sz2.feed = lambda line, feed=sz2.feed: (seen.append(line), feed(line))[1]
    _folder_run(scorer, [str(logs)], state, sz2, lambda k: True)
    assert seen == b[50:60]


def test_the_turn_file_appends_reads_past_a_torn_line_and_rewrites(tmp_path):
    from fusionlog.follow_state import Mark

    tf = TurnFile(tmp_path / "t.turns")
    began = Mark(0, "/l/a\tb.log", 1, 2, "0" * 64, 0, 0, 0)  # a file first opened after the last save
    tf.append([("/l/a.log", 3), ("/l/b.log", 5)], [(4, ["k1", "k2"])])
    tf.append([("/l/b.log", 5), ("/l/a.log", 9), ("/l/a\tb.log", 12)], origins={"/l/a\tb.log": began},
              sync=False)  # (b, 5) was written already
    assert tf.count == 4 and tf.saved_end == 12
    assert TurnFile.read(tf.path, 0) == ([("/l/a.log", 3), ("/l/b.log", 5), ("/l/a.log", 9), ("/l/a\tb.log", 12)],
                                         [(4, ["k1", "k2"])], {"/l/a\tb.log": began})
    assert TurnFile.read(tf.path, 4)[:2] == ([("/l/b.log", 5), ("/l/a.log", 9), ("/l/a\tb.log", 12)], [])
    with open(tf.path, "a", encoding="utf-8") as fh:
        fh.write("15\t")  # a crash mid-append: the torn line is not read
    assert TurnFile.read(tf.path, 0)[0][-1] == ("/l/a\tb.log", 12)
    tf.rewrite([("/l/a.log", 9), ("/l/a\tb.log", 12)], [(10, ["k3"])], {"/l/a\tb.log": began})
    assert tf.count == 2 and TurnFile.read(tf.path, 5) == ([("/l/a.log", 9), ("/l/a\tb.log", 12)], [(10, ["k3"])],
                                                           {"/l/a\tb.log": began})
    assert not (tmp_path / "t.turns.tmp").exists()


@pytest.mark.slow
def test_kill_9_of_a_folder_follow_loses_no_window_and_writes_none_twice(bgl_artifact, data_dir, tmp_path):
    """A real `detect --follow DIR --state` over two nodes' files, killed with SIGKILL while a 20-line BGL window
    was half full. While it is down one file grows and a third node's file appears. The restart rebuilds the
    half-full window from both files, reads the new lines and the new file: its windows, appended to the same
    output, are the batch detector's over all the lines in the order they were read, none twice; SIGTERM leaves
    the last, half-full window open for the next run."""
    import signal

    from tests.test_follow_state import _detect, _verdicts, _wait

    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:65]
    (tmp_path / "all.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    batch = _detect(bgl_artifact, tmp_path / "all.log")
    ref = [json.loads(line) for line in batch.communicate(timeout=300)[0].splitlines()]
    assert [v["events"] for v in ref] == [20, 20, 20, 5]
    logs, state, out = tmp_path / "nodes", tmp_path / "bgl.state", tmp_path / "verdicts.jsonl"
    logs.mkdir()
    _write(logs / "node-a.log", lines[:30], "w")
    _write(logs / "node-b.log", lines[30:45], "w")
    proc = _detect(bgl_artifact, logs, "--follow", "--state", str(state), "-o", str(out))
    _wait(lambda: state.exists() and json.loads(state.read_text())["done"] == 45, proc)
    proc.kill()  # SIGKILL: nothing more runs
    proc.wait(timeout=60)
    assert len(_verdicts(out)) == 2 and json.loads(state.read_text())["open_sessions"] == 1
    _write(logs / "node-b.log", lines[45:60])
    _write(logs / "node-c.log", lines[60:], "w")
    proc = _detect(bgl_artifact, logs, "--follow", "--state", str(state), "-o", str(out))
    _wait(lambda: json.loads(state.read_text())["done"] == 65 and len(_verdicts(out)) == 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "resuming 2 file(s) at line 0: reading 45 line(s) again" in err and "3 files, 65 lines" in err
    assert "1 open session(s) left open for the next run" in err
    got = _verdicts(out)
    assert [(v["key"], v["events"], round(v["score"], 6)) for v in got] == [
        (v["key"], v["events"], round(v["score"], 6)) for v in ref[:3]]
    assert json.loads(state.read_text())["open_sessions"] == 1


class _Settles:
    """What `FollowState.settled` reads of a sessionizer: all read lines fed, the oldest open session `behind`
    lines back."""

    def __init__(self, mf: MultiFollow, behind: int | None) -> None:
        self.mf, self.behind, self.open_sessions = mf, behind, int(behind is not None)

    @property
    def line_no(self) -> int:
        return self.mf.line_now()

    def oldest_open_line(self) -> int | None:
        return None if self.behind is None else max(1, self.line_no - self.behind)

    def split_parts(self) -> dict[str, int]:
        return {}

    def carry(self) -> StreamCarry:
        return BLANK_CARRY


def test_the_turn_file_is_rewritten_without_the_turns_before_the_mark(tmp_path, monkeypatch):
    """Many one-line turns of two files while the oldest open session moves on, a session closed by wall-clock
    idleness after each: the turn file is rewritten to the turns and closes after the saved mark (not grown without
    end; the closes read from the file itself, the process keeps none), and a restart reads exactly those."""
    from fusionlog.stream import CLOSED_WALL_IDLE, FinishedSession

    monkeypatch.setattr(folder_state, "COMPACT_TURNS", 8)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").touch()
    (logs / "b.log").touch()
    st = tmp_path / "st.json"
    state = FolderFollowState(st, [str(logs)], clock=itertools.count(0, 10).__next__)
    mf = MultiFollow([str(logs)], stop=threading.Event(), poll_interval=0.001, keep_position=True)
    state.attach(mf)
    it = iter(mf)
    sz = _Settles(mf, behind=5)
    for i in range(40):
        _write(logs / ("a.log" if i % 3 else "b.log"), [f"line {i}"], "a")
        got = _until_quiet(it)
        assert got == [f"line {i}"]
        state.finished(i + 1, [FinishedSession(f"k{i}", [1], None, None, CLOSED_WALL_IDLE)])
        state.recording(sz)
        state.settled(sz)
    saved = json.loads(st.read_text(encoding="utf-8"))
    assert saved["done"] == 40 and 30 <= saved["mark"]["line"] < 40
    assert state.turn_file.count < 20  # 40 turns written, the old ones dropped
    turns = TurnFile.read(state.turn_file.path, saved["mark"]["line"])[0]
    assert turns == [(name, end) for name, end in mf.turns.after(saved["mark"]["line"])]
    closes = TurnFile.read(state.turn_file.path, 0)[1]
    assert closes == [(i + 1, [f"k{i}"]) for i in range(40) if i + 1 >= closes[0][0]] and closes[0][0] > 20
    state.close()
    again = FolderFollowState(st, [str(logs)])
    assert again.resume_folder.turns == turns and again.position.base == saved["mark"]["line"]
    assert again.replay_closes == {at: [keys] for at, keys in closes if at > saved["mark"]["line"]}
    again.close()


def test_a_file_rotated_away_while_followed_is_not_read_again_after_a_restart(tmp_path):
    """A dated rotation while the follow runs leaves the old file under a live name; the restarted follow knows
    it was read (by identity and first bytes) and reads only what is new. A file that reuses its name later is
    new and read whole."""
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "a.log", ["a1", "a2"], "w")
    st = tmp_path / "st.json"

    def run(check) -> None:
        state = FolderFollowState(st, [str(logs)], clock=itertools.count(0, 10).__next__)
        stop = threading.Event()
        mf = MultiFollow([str(logs)], stop=stop, poll_interval=0.001, keep_position=True,
                         resume=state.resume_folder, clock=itertools.count(0, 10).__next__)  # a rescan each pass
        state.attach(mf)
        check(iter(mf), lambda: state.settled(_Settles(mf, None)))
        stop.set()
        state.close()

    def first(it, settle) -> None:
        assert _until_quiet(it) == ["a1", "a2"]
        _write(logs / "a.log", ["a3"])
        os.rename(logs / "a.log", logs / "a.log-20261128")
        _write(logs / "a.log", ["a4"], "w")
        assert _until_quiet(it) + _until_quiet(it) + _until_quiet(it) == ["a3", "a4"]
        settle()

    def second(it, settle) -> None:
        assert _until_quiet(it) + _until_quiet(it) == []
        _write(logs / "a.log", ["a5"])
        _write(logs / "b.log", ["b1"], "w")
        assert sorted(_until_quiet(it) + _until_quiet(it)) == ["a5", "b1"]
        settle()

    run(first)
    saved = json.loads(st.read_text(encoding="utf-8"))
    assert [m["path"] for m in saved["read"]] == [str(logs / "a.log")] and saved["done"] == 4
    run(second)
    os.remove(logs / "a.log-20261128")
    _write(logs / "a.log-20261128", ["x1"], "w")  # a new file under the old name (maybe the same inode)
    run(lambda it, settle: (_until_quiet(it) + _until_quiet(it) == ["x1"]) or pytest.fail("x1 not read"))


def test_a_folder_file_whose_name_is_not_utf8_is_saved_and_not_read_again(tmp_path):
    """A followed folder's file named by bytes that are not UTF-8 goes to the state and the turn file as JSON
    escapes (it failed to save, UnicodeEncodeError), and the restart knows it by that name: it reads only what is
    new."""
    logs = tmp_path / "logs"
    logs.mkdir()
    name = logs / os.fsdecode(b"bad\xff\xfe.log")
    _write(name, ["a1", "a2"], "w")
    st = tmp_path / "st.json"
    _read_and_save(st, logs, ["a1", "a2"])
    saved = json.loads(st.read_text(encoding="ascii"))
    assert list(saved["now"]) == [str(name)] and saved["done"] == 2
    _write(name, ["a3"])
    _read_and_save(st, logs, ["a3"])


def _read_and_save(st, logs, wanted: list[str]) -> None:
    """A folder follow of `logs` with state `st` that reads `wanted` (as the turns come) and saves with nothing open."""
    state = FolderFollowState(st, [str(logs)], clock=itertools.count(0, 10).__next__)
    stop = threading.Event()
    mf = MultiFollow([str(logs)], stop=stop, poll_interval=0.001, keep_position=True,
                     resume=state.resume_folder, clock=itertools.count(0, 10).__next__)
    state.attach(mf)
    it = iter(mf)
    assert _until_quiet(it) + _until_quiet(it) == wanted
    state.recording(None)
    state.settled(_Settles(mf, None), final=True)
    stop.set()
    state.close()


def test_each_damaged_field_of_a_folder_state_is_one_error_naming_the_file_and_the_field(tmp_path):
    """A folder's state edited by hand: its own fields and those of each file's point (`starts`, `now`, `read`), each
    of the wrong type or out of range, give one ConfigError naming the state file and the field (before: a
    TypeError, or a file point's string offset taken as is)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "a.log", ["a1", "a2"], "w")
    st = tmp_path / "st.json"
    _read_and_save(st, logs, ["a1", "a2"])
    saved = json.loads(st.read_text(encoding="utf-8"))
    name = str(logs / "a.log")
    point = saved["now"][name]
    damages = [
        ({"done": "x"}, "done"), ({"done": 1}, "mark.line"), ({"mark": []}, "mark"),
        ({"mark": {**saved["mark"], "phase": -1}}, "mark.phase"),
        ({"mark": {**saved["mark"], "carry": []}}, "mark.carry"),
        ({"starts": []}, "starts"), ({"starts": {name: {**point, "offset": "abc"}}}, f'starts["{name}"].offset'),
        ({"now": {name: {**point, "offset": -5}}}, f'now["{name}"].offset'), ({"read": {}}, "read"),
        ({"read": [5]}, "read[0]"), ({"closes": {"a": 1}}, "closes"), ({"parts": [1, 2]}, "parts"),
        ({"ends": [["a", "b", "c"]]}, "ends[0][0]"), ({"open_sessions": -1}, "open_sessions"),
    ]
    for change, named in damages:
        st.write_text(json.dumps({**saved, **change}), encoding="utf-8")
        with pytest.raises(ConfigError) as err:
            FolderFollowState(st, [str(logs)])
        assert str(err.value).startswith(f"--state {st}: damaged: field {named} is "), (change, str(err.value))


def test_the_follow_benchmark_reads_every_line_in_each_case(data_dir):
    """`fusionlog bench follow` (figures only): each case reads all the lines it was given, then stops."""
    from eval.bench_follow import run

    out = run(repeat=1, files=3, data_dir=str(data_dir), rounds=1)
    assert out["lines"] == 2000 and out["lines_read"] == dict.fromkeys(("file", "file_state", "folder",
                                                                         "folder_state"), 2000)
    assert all(len(v) == 1 and v[0] > 0 for v in out["seconds_per_round"].values())


def test_an_exception_line_goes_with_its_own_files_record_across_turns_and_a_restart(tmp_path):
    """Two pods' logs in a folder, one session a record (size 1). Pod a's record and pod b's are read in one poll;
    a's Java exception line is written later and read in a's next turn: it goes with a's record (part 1 of id=1),
    not with b's, the last record read. A crash before it: the restart has a's record in the mark's carry (its file's
    tail) and gives it the line alike. Before stop 30 the stream kept one tail: the line went to id=2."""
    from fusionlog.config import SessionRule
    from fusionlog.stream import StreamSessionizer

    logs = tmp_path / "logs"
    logs.mkdir()

    def sessionizer() -> StreamSessionizer:
        return StreamSessionizer(len, SessionRule("key", key_pattern=r"id=(\w+)"),
                                 r"<Date> <Time> \[<Thread>\] <Content>",
                                 StreamLimits(max_events_per_session=1, idle_seconds=None))

    def run(state: FolderFollowState | None, rounds: list[dict[str, list[str]]]) -> list[tuple]:
        stop = threading.Event()
        mf = MultiFollow([str(logs)], stop=stop, poll_interval=0.001, keep_position=state is not None,
                         resume=state.resume_folder if state is not None else None)
        sz = sessionizer()
        if state is not None:
            state.attach(mf)
            sz.start_at(state.position.base, state.carry)
            sz.expect_parts(state.replay_parts)
        mf.on_turn = sz.from_file
        it, got = iter(mf), []
        for writes in rounds:
            for name, lines in writes.items():
                _write(logs / name, lines, "a")
            for line in it:  # each line fed before the next is read, as `detect_stream` does (the turn hook)
                if line is None:
                    break
                got += [(s.key, s.part, len(s.event_ids)) for s in sz.feed(line)]
            if state is not None:
                state.settled(sz)
        stop.set()
        if state is not None:
            state.close()
        return got

    first = {"a.log": ["2024-01-01 00:00:00 [main] placed id=1"], "b.log": ["2024-01-01 00:00:01 [main] placed id=2"]}
    trace = {"a.log": ["java.io.IOException: Connection reset", "\tat a.b.C.run(C.java:1)"]}
    assert run(None, [first, trace]) == [("1", 0, 1), ("2", 0, 1), ("1", 1, 1)]
    for name in ("a.log", "b.log"):
        (logs / name).unlink()
    st = tmp_path / "st.json"
    assert run(FolderFollowState(st, [str(logs)], clock=itertools.count(0, 10).__next__), [first]) == [
        ("1", 0, 1), ("2", 0, 1)]
    saved = json.loads(st.read_text(encoding="utf-8"))
    assert saved["mark"]["line"] == 2 and saved["mark"]["carry"]["file"].endswith("b.log")
    assert [row[0][-5:] for row in saved["mark"]["carry"]["parked"]] == ["a.log"]
    assert run(FolderFollowState(st, [str(logs)]), [trace]) == [("1", 1, 1)]


def test_a_turn_file_write_cut_short_spoils_only_its_own_row(tmp_path, monkeypatch, caplog):
    """A full disk cuts a turn file write in half (a new file's name, two turns, a close); the next save writes them
    again. The rows after the cut start on a line of their own and name the file again, so a restart reads every
    turn and close whole (before, the retry ran on from the cut row, `6<TAB>5<TAB>1`, and a restart refused the turn
    file as damaged)."""
    tf = TurnFile(tmp_path / "st.json.turns")
    tf.append([("a.log", 3)])
    real_open = open

    class CutShort:
        """A file whose one write stops halfway, as on a full disk."""

        def __init__(self, fh) -> None:
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.fh.close()

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def write(self, data: bytes) -> int:
            self.fh.write(data[:len(data) // 2 + 2])  # into the second turn's row
            self.fh.flush()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(fusionlog.io, "open", lambda *a, **k: CutShort(real_open(*a, **k)), raising=False)
    with pytest.raises(OSError):
        tf.append([("b.log", 5), ("a.log", 6)], [(4, ["k1"])])
    monkeypatch.delattr(fusionlog.io, "open")
    assert not tf.path.read_bytes().endswith(b"\n")  # a row cut in two
    tf.append([("b.log", 5), ("a.log", 6)], [(4, ["k1"])])  # the next save writes them again
    turns, closes, _ = TurnFile.read(tf.path, 0)
    # the turn the cut write had whole comes twice: a replay skips a turn that ends where it already is
    assert turns == [("a.log", 3), ("b.log", 5), ("b.log", 5), ("a.log", 6)] and closes == [(4, ["k1"])]
    assert "1 row(s) could not be read" in caplog.text
