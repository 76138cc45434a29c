"""Follow benchmark: `detect --follow` lines/s over one file and over a folder, with and without `--state`.

    fusionlog bench follow [--repeat 20] [--files 4] [--model DIR] [--rounds 3]

The lines are BGL_2k repeated N times; the folder case deals them round-robin in blocks of 100 lines into
`--files` files. Each case runs the whole live path on files already written: `follow` (one file) or
`MultiFollow` (the folder) -> `detect_stream` (sessions, scoring, verdicts to a null sink) until the first quiet
poll after the last line. With `--state` the position is kept (for the folder: the turns) and the state file is
written as `detect` writes it (at most once a second, synced), so the difference is what keeping the place
costs. Without `--model`, bench_detect's `DemoScorer` stands in for the trained detector. Figures only; never
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fusionlog.data.paths import resolve_data_dir
from fusionlog.data.registry import dataset_info


def _write_cases(src: Path, repeat: int, files: int, workdir: Path) -> tuple[Path, Path, int]:
    lines = src.read_bytes().rstrip(b"\n").split(b"\n") * repeat
    one = workdir / "one.log"
    one.write_bytes(b"\n".join(lines) + b"\n")
    folder = workdir / "folder"
    folder.mkdir()
    parts: list[list[bytes]] = [[] for _ in range(files)]
    for i in range(0, len(lines), 100):
        parts[(i // 100) % files].extend(lines[i:i + 100])
    for k, part in enumerate(parts):
        (folder / f"node-{k}.log").write_bytes(b"\n".join(part) + b"\n" if part else b"")
    return one, folder, len(lines)


def _until_quiet(lines: Iterator[str | None], stop: threading.Event, total: int, seen: list[int],
                 timeout: float = 600.0) -> Iterator[str | None]:
    """The lines, until the first quiet poll once `total` lines came (or `timeout` s): then the follow is
    stopped. `seen[0]` counts the lines."""
    end = time.monotonic() + timeout
    for line in lines:
        if line is None:
            if seen[0] >= total or time.monotonic() > end:
                stop.set()
        else:
            seen[0] += 1
        yield line


def _case(scorer, make: Callable[[threading.Event, Path | None], tuple[Iterator[str | None], object, object]],
          total: int, state_dir: Path | None) -> tuple[float, int]:
    """Seconds for one run of the live path (a fresh state file each time), and the lines it read. `make` gives the
    lines, the state (or None) and the folder's `MultiFollow` (or None), whose turns go to the sessionizer as in
    `detect` (each file's trace tail)."""
    from fusionlog.stream import StreamLimits, detect_stream, scorer_sessionizer

    stop = threading.Event()
    state_path = None
    if state_dir is not None:
        state_path = Path(tempfile.mkdtemp(dir=state_dir)) / "st.json"
    t0 = time.perf_counter()
    lines, state, folder = make(stop, state_path)
    limits = StreamLimits(idle_seconds=None, wall_idle_seconds=None)
    sz = scorer_sessionizer(scorer, limits)
    if folder is not None:
        folder.on_turn = sz.from_file
    seen = [0]
    try:
        with open(os.devnull, "w", encoding="utf-8") as sink:
            for verdict in detect_stream(scorer, _until_quiet(lines, stop, total, seen), limits, sessionizer=sz,
                                         checkpoint=state):
                sink.write(json.dumps(verdict) + "\n")
    finally:
        if state is not None:
            state.close()
    return time.perf_counter() - t0, seen[0]


def run(repeat: int = 20, files: int = 4, model: str | None = None, data_dir: str | None = None,
        dataset: str = "bgl", rounds: int = 3) -> dict:
    from eval.bench_detect import DemoScorer, _load_model
    from fusionlog.folder_state import FolderFollowState
    from fusionlog.follow_state import FollowState
    from fusionlog.multifollow import MultiFollow
    from fusionlog.stream import follow

    ddir = resolve_data_dir(data_dir)
    scorer = _load_model(model, None, None) if model else DemoScorer(dataset, ddir)
    src = ddir / dataset_info(dataset).spec.files[0].path
    workdir = Path(tempfile.mkdtemp(prefix="fusionlog-bench-follow-"))
    one, folder, total = _write_cases(src, repeat, files, workdir)

    def one_file(stop, state_path):
        state = FollowState(state_path, one) if state_path else None
        return follow(one, stop=stop, poll_interval=0.001, position=state.position if state else None), state, None

    def a_folder(stop, state_path):
        state = FolderFollowState(state_path, [str(folder)]) if state_path else None
        mf = MultiFollow([str(folder)], stop=stop, poll_interval=0.001, keep_position=state is not None)
        if state is not None:
            state.attach(mf)
        return iter(mf), state, mf

    cases = {"file": (one_file, None), "file_state": (one_file, workdir), "folder": (a_folder, None),
             "folder_state": (a_folder, workdir)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    read: dict[str, int] = {}
    for _ in range(max(1, rounds)):  # interleaved; the best of each is the least disturbed
        for name, (make, state_dir) in cases.items():
            seconds, read[name] = _case(scorer, make, total, state_dir)
            times[name].append(seconds)
    best = {name: min(v) for name, v in times.items()}
    return {
        "file": str(src),
        "repeat": repeat,
        "lines": total,
        "folder_files": files,
        "lines_read": read,
        "scorer": f"load_scorer({model})" if model else f"DemoScorer({dataset})",
        "rounds": rounds,
        "seconds_per_round": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "lines_per_s": {k: round(total / v) for k, v in best.items()},
        "state_cost_file": round(best["file_state"] / best["file"] - 1, 3),
        "state_cost_folder": round(best["folder_state"] / best["folder"] - 1, 3),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=int, default=20, help="repeat the 2k file N times (default 20)")
    p.add_argument("--files", type=int, default=4, help="files of the folder case (default 4)")
    p.add_argument("--model", help="detector artifact folder (default: a DemoScorer fitted on --dataset)")
    p.add_argument("--dataset", default="bgl", help="raw-line dataset for the lines and the demo scorer")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is reported")
    p.add_argument("--data-dir")


def main(args: argparse.Namespace) -> int:
    if args.files < 1 or args.repeat < 1:
        raise SystemExit("--files and --repeat must be >= 1")
    print(json.dumps(run(args.repeat, args.files, args.model, args.data_dir, args.dataset, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    add_args(ap)
    raise SystemExit(main(ap.parse_args()))
