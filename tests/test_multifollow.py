"""`detect --follow DIR|'GLOB'`: every live file of a folder followed as one stream (`fusionlog.multifollow`)."""

from __future__ import annotations

import gzip
import os
import threading

from fusionlog import multifollow
from fusionlog.multifollow import MultiFollow, live_files
from fusionlog.stream import StreamLimits, detect_stream, finished_verdicts, scorer_sessionizer
from tests.test_follow_state import _until_quiet, _write
from tests.test_ingest import make_scorer, os_lines  # noqa: F401 - fixtures


def test_live_files_leave_out_rotated_compressed_and_hidden_copies(tmp_path):
    for name in ("app.log", "app.log.1", "db.log", ".hidden.log", "notes.txt"):
        _write(tmp_path / name, ["x"], "w")
    with gzip.open(tmp_path / "app.log.2.gz", "wt") as fh:
        fh.write("old\n")
    assert [p.name for p in live_files([str(tmp_path)])] == ["app.log", "db.log", "notes.txt"]
    assert [p.name for p in live_files([str(tmp_path / "*.log")])] == ["app.log", "db.log"]
    assert [p.name for p in live_files([str(tmp_path / "app.log.1"), str(tmp_path / "nope.log")])] == [
        "app.log.1", "nope.log"]  # named files are followed as named, a missing one waited for
    assert live_files([str(tmp_path / "none*")]) == []


def test_a_folder_is_followed_across_new_files_rotations_deletions_and_floods(tmp_path, monkeypatch):
    _write(tmp_path / "app.log", ["a1", "a2"], "w")
    _write(tmp_path / "app.log.1", ["old app line"], "w")  # history: not read by a follow
    _write(tmp_path / "db.log", ["d1"], "w")
    clock = [0.0]
    stop = threading.Event()
    mf = MultiFollow([str(tmp_path)], stop=stop, poll_interval=0.001, rescan=5.0, clock=lambda: clock[0])
    it = iter(mf)
    assert sorted(_until_quiet(it)) == ["a1", "a2", "d1"]
    _write(tmp_path / "db.log", ["d2"])
    _write(tmp_path / "web.log", ["w1", "w2"], "w")  # a new file: seen at the next rescan
    assert _until_quiet(it) == ["d2"]
    clock[0] = 10.0
    assert _until_quiet(it) == ["w1", "w2"]  # from its top
    _write(tmp_path / "app.log", ["a3"])  # written just before a date-stamped rotation
    os.rename(tmp_path / "app.log", tmp_path / "app.log-20261128")
    _write(tmp_path / "app.log", ["a4"], "w")
    got = _until_quiet(it) + _until_quiet(it)
    clock[0] = 20.0  # the rotated name is seen, and not read again: its lines were read under the old name
    os.remove(tmp_path / "db.log")
    got += _until_quiet(it) + _until_quiet(it)
    assert got == ["a3", "a4"]
    assert sorted(p.name for p in mf.followers) == ["app.log", "web.log"]  # db.log, read to its end, dropped
    assert mf.files_read == 4  # app.log (two files under the name), db.log, web.log
    monkeypatch.setattr(multifollow, "TURN_LINES", 3)  # a flood in one file yields the turn
    _write(tmp_path / "app.log", [f"f{i}" for i in range(7)])
    _write(tmp_path / "web.log", ["w3"])
    flood = _until_quiet(it)
    assert sorted(flood) == sorted([f"f{i}" for i in range(7)] + ["w3"]) and flood.index("w3") <= 3
    with open(tmp_path / "web.log", "a", encoding="utf-8") as fh:
        fh.write("w4 without its newline yet")
    assert _until_quiet(it) == []  # waits for its newline ...
    stop.set()
    assert list(it) == ["w4 without its newline yet"]  # ... and a stop gives it as it is, as a one-file follow does


def test_instances_spread_over_two_files_are_the_sessions_of_one_file(os_lines, make_scorer, tmp_path):  # noqa: F811
    """Nova's lines of half the instances in one file, the others' in another, written while followed: the
    sessions and scores are those of all the lines read as one file (sessions gather by key from any file)."""
    import re

    from fusionlog.data.registry import INSTANCE_KEY

    scorer = make_scorer()
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=None)
    keyed = [(m.group(1) if (m := re.search(INSTANCE_KEY, line)) else "", line) for line in os_lines]
    keys = sorted({k for k, _ in keyed if k})
    left = {k for i, k in enumerate(keys) if i % 2 == 0}
    a = [line for k, line in keyed if k in left]
    b = [line for k, line in keyed if k and k not in left]
    whole = finished_verdicts(scorer, (lambda sz: [*sz.feed_many(a + b), *sz.flush()])(
        scorer_sessionizer(scorer, limits)))
    _write(tmp_path / "nova-a.log", a[: len(a) // 2], "w")
    _write(tmp_path / "nova-b.log", b[: len(b) // 2], "w")
    stop = threading.Event()
    mf = iter(MultiFollow([str(tmp_path / "nova-*.log")], stop=stop, poll_interval=0.001))
    quiet = [0]

    def lines():
        for item in mf:
            if item is None:
                quiet[0] += 1
                if quiet[0] == 1:  # the rest of both files, written while followed
                    _write(tmp_path / "nova-a.log", a[len(a) // 2:])
                    _write(tmp_path / "nova-b.log", b[len(b) // 2:])
                else:
                    stop.set()
            yield item

    got = list(detect_stream(scorer, lines(), limits))
    assert len(got) == len(keys) >= 5
    seen = sorted((v["key"], v["events"], round(v["score"], 6)) for v in got)
    assert seen == sorted((v["key"], v["events"], round(v["score"], 6)) for v in whole)


def test_detect_follows_a_folder(bgl_artifact, data_dir, tmp_path):
    """`fusionlog detect --follow DIR`: each file's lines as they come (two nodes' 20-line windows here); a file
    that appears while it runs is read too; SIGTERM scores what is open and says how many files it read. The new
    node's log begins with an exception line: no record of its own file is before it, so neither the follow nor
    `detect` over the files gives it to the other node's window (each file's trace tail, as training reads them)."""
    import json
    import signal
    import subprocess
    import sys
    import time

    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:60]
    logs = tmp_path / "nodes"
    logs.mkdir()
    _write(logs / "node-a.log", lines[:20], "w")
    _write(logs / "node-b.log", lines[20:40], "w")
    out = tmp_path / "v.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "fusionlog.cli", "detect", "--model", str(bgl_artifact),
                             "--follow", str(logs), "--poll-interval", "0.05", "--wall-idle-seconds", "0", "-o",
                             str(out)], stderr=subprocess.PIPE, text=True)

    def verdicts() -> list[dict]:
        return [json.loads(v) for v in out.read_text(encoding="utf-8").splitlines()] if out.exists() else []

    def wait_for(n: int) -> None:
        end = time.monotonic() + 180
        while len(verdicts()) < n and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.05)
        assert len(verdicts()) == n

    try:
        wait_for(1)  # the first full window; the second closes when a later line comes
        _write(logs / "node-c.log", ["java.io.IOException: Connection reset", *lines[40:50]], "w")  # half a window
        wait_for(2)  # its first line, read at a rescan (every 5 s), closed the second window
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    got = verdicts()
    batch = subprocess.run([sys.executable, "-m", "fusionlog.cli", "detect", "--model", str(bgl_artifact),
                            str(logs / "node-a.log"), str(logs / "node-b.log"), str(logs / "node-c.log")],
                           capture_output=True, text=True, timeout=300)
    ref = [json.loads(v) for v in batch.stdout.splitlines()]
    assert [v["events"] for v in got] == [20, 20, 10] == [v["events"] for v in ref]
    assert sorted(round(v["score"], 6) for v in got) == sorted(round(v["score"], 6) for v in ref)
    assert "node-c.log appeared; reading it from the top" in err and "detect: 3 files, 51 lines" in err


def test_files_past_the_open_file_limit_wait_for_room_with_a_warning(tmp_path, caplog):
    import logging

    for name in ("a.log", "b.log", "c.log"):
        _write(tmp_path / name, [name[0] + "1"], "w")
    clock = [0.0]
    stop = threading.Event()
    mf = MultiFollow([str(tmp_path)], stop=stop, poll_interval=0.001, clock=lambda: clock[0], max_files=2)
    it = iter(mf)
    with caplog.at_level(logging.WARNING, logger="fusionlog.multifollow"):
        assert _until_quiet(it) == ["a1", "b1"]
    assert "1 live file(s) wait" in caplog.text and "c.log" in caplog.text and "ulimit -n" in caplog.text
    assert mf.waiting == {(tmp_path / "c.log").absolute()}
    os.remove(tmp_path / "a.log")  # a followed file goes away: its room goes to the waiting one, read whole
    clock[0] = 10.0
    assert _until_quiet(it) + _until_quiet(it) == ["c1"] and not mf.waiting
    stop.set()


def test_the_open_file_budget_raises_the_soft_limit_to_the_hard_one():
    import subprocess
    import sys

    code = ("import resource; from fusionlog.multifollow import open_file_budget, FD_RESERVE\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
            "budget = open_file_budget()\n"
            "now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
            "assert now == hard or hard == resource.RLIM_INFINITY and now >= 65536, (now, hard)\n"
            "assert budget == now - FD_RESERVE, budget\n"
            "print(now)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 256
