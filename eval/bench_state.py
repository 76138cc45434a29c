"""State benchmark: what `detect --follow --state` pays to keep its place while one long session pins the mark.

    fusionlog bench state [--closes 1000 10000 100000] [--repeat 5]

A followed one-line file, one session open since its first line (the resume mark stays before it), and N sessions
closed by wall-clock idleness since: each close is kept until the mark passes it (a restart closes those sessions
where this run did). For each N: the state file's and the close log's sizes, one save of the state (atomic,
synced, as `detect` writes it at most once a second), one close logged before its verdicts (synced), and the
memory the state holds for the N closes (Python's allocations, `tracemalloc`, in a run of its own). Stop 28
kept the closes in the state's JSON and rewrote it at each close: 2.1 / 13.7 / 110 ms at 1,000 / 10,000 /
100,000 closes; stop 29 kept them in a list too. Figures only; never asserted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path


class _Pinned:
    """What `FollowState` reads of a sessionizer: one line read, the session open since it pinning the mark."""

    line_no, open_sessions = 1, 1

    def oldest_open_line(self) -> int:
        return 1

    def split_parts(self) -> dict[str, int]:
        return {}

    def carry(self):
        from fusionlog.stream import BLANK_CARRY

        return BLANK_CARRY


def _close(state, n: int = 1) -> None:
    from fusionlog.stream import CLOSED_WALL_IDLE, FinishedSession

    state.finished(1, [FinishedSession(str(uuid.uuid4()), [1], None, None, CLOSED_WALL_IDLE) for _ in range(n)])


def _pinned_state(root: Path):
    """A state of a one-line file, its mark pinned before line 1 (and the follow to stop)."""
    from fusionlog.follow_state import FollowState
    from fusionlog.stream import follow

    log = root / "app.log"
    log.write_text("x 1\n", encoding="utf-8")
    state = FollowState(root / "st.json", log, clock=itertools.count(0, 10).__next__)
    stop = threading.Event()
    lines = follow(log, stop=stop, poll_interval=0.001, position=state.position)
    next(lines)
    state.settled(_Pinned())
    return state, stop, lines


def _close_up_to(state, made: int, n: int) -> int:
    """Close sessions until `n` are closed, logged in batches, as `detect` logs the closes of one poll."""
    sz = _Pinned()
    while made < n:
        batch = min(1_000, n - made)
        _close(state, batch)
        state.recording(sz)
        state.settled(sz)
        made += batch
    return made


def held_bytes(closes: tuple[int, ...], workdir: Path) -> dict[int, int]:
    """The memory allocated, and still held, while the pinned state took each number of closes."""
    state, stop, lines = _pinned_state(workdir)
    tracemalloc.start()
    base, made, held = tracemalloc.get_traced_memory()[0], 0, {}
    try:
        for n in sorted(closes):
            made = _close_up_to(state, made, n)
            held[n] = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        stop.set()
        lines.close()
        state.close()
    return held


def run(closes: tuple[int, ...] = (1_000, 10_000, 100_000), repeat: int = 5, workdir: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(workdir or tmp)
        (root / "held").mkdir()
        held = held_bytes(closes, root / "held")
        state, stop, lines = _pinned_state(root)
        sz = _Pinned()
        rows, made = [], 0
        for n in sorted(closes):
            made = _close_up_to(state, made, n)
            t0 = time.perf_counter()
            for _ in range(repeat):
                state.save(sz)
            save = (time.perf_counter() - t0) / repeat
            t0 = time.perf_counter()
            for _ in range(repeat):
                _close(state)
                state.recording(sz)
            logged = (time.perf_counter() - t0) / repeat
            made += repeat
            rows.append({"closes": made, "state_bytes": (root / "st.json").stat().st_size,
                         "close_log_bytes": (root / "st.json.closes").stat().st_size,
                         "save_ms": round(save * 1e3, 2), "close_logged_ms": round(logged * 1e3, 2),
                         "held_bytes": held[n]})
        stop.set()
        lines.close()
        state.close()
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "repeat": repeat, "rows": rows}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--closes", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                   help="closes since the mark to measure at (default 1000 10000 100000)")
    p.add_argument("--repeat", type=int, default=5, help="saves and logged closes timed at each size (default 5)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def main(args: argparse.Namespace) -> int:
    out = run(tuple(args.closes), args.repeat)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"--state behind a pinned mark ({out['machine']}, {out['cpus']} CPUs, {out['repeat']} timings each)")
    for r in out["rows"]:
        print(f"{r['closes']:>8,} closes: state {r['state_bytes']:,} B, close log {r['close_log_bytes'] / 1e6:.2f} MB, "
              f"one save {r['save_ms']:.2f} ms, one close logged {r['close_logged_ms']:.2f} ms, "
              f"held in memory {r['held_bytes'] / 1e3:,.1f} kB")
    return 0
