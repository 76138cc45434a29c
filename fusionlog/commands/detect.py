"""`fusionlog detect --model DIR [FILE|-] [--follow]`: stream raw lines through a detector, JSON verdicts out."""

from __future__ import annotations

import argparse
import time
from collections import Counter

from fusionlog.commands._common import positive_int, positive_seconds, seconds_or_never
from fusionlog.constants import MAX_LINE_BYTES
from fusionlog.watch import DriftWatch, FitWatch, drift_hint, skip_reasons

NAME = "detect"
HELP = "score raw log lines (file, stdin, or a growing file) with a trained detector; one JSON line per session"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="detector artifact folder (written by `fusionlog fuse`)")
    p.add_argument("source", nargs="*", default=["-"],
                   help="raw log file(s), a directory of them or a quoted glob ('logs/app.log*'), read as one "
                        "stream oldest first (app.log.2.gz, app.log.1, app.log); - for stdin (default)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep reading a growing file like `tail -F` (survives truncation and rotation); given a "
                        "directory, a glob or several files, every live file as one stream, new files included")
    p.add_argument("--from-end", action="store_true", help="with --follow: start at the end of the file")
    p.add_argument("--state", metavar="FILE",
                   help="with --follow: keep where it is in FILE (created), so a restart after a stop or a crash "
                        "goes on there with its open sessions, even across a rotation; a stop leaves them open "
                        "for the next run instead of scoring them cut short. A folder's follow keeps each file's "
                        "place and the order their lines were read in (FILE.turns beside it)")
    p.add_argument("--output", "-o", help="write verdicts here instead of stdout (appended to with --state)")
    p.add_argument("--anomalies-only", action="store_true", help="write only sessions judged anomalous")
    p.add_argument("--examples", action="store_true",
                   help="give each top template and has/new departure of a verdict the session's first raw line "
                        "of it (line number and text); keeps up to 64 lines per open session")
    g = p.add_argument_group("memory bounds and timeouts")
    g.add_argument("--max-open-sessions", type=positive_int, default=10_000,
                   help="open sessions kept at most; the least recently updated is scored early (default 10000)")
    g.add_argument("--max-events", type=positive_int, default=1_000,
                   help="events per session at most; a longer session is scored in parts (default 1000)")
    g.add_argument("--idle-seconds", type=seconds_or_never, default=None,
                   help="key sessions: close after this much log time without a line; 0 = never "
                        "(default: 3600 with --follow or stdin; never for a file, so it scores like a batch)")
    g.add_argument("--wall-idle-seconds", type=seconds_or_never, default=None,
                   help="close any session after this much wall time without a line (default: 30 with "
                        "--follow or stdin, never for a file)")
    g.add_argument("--poll-interval", type=positive_seconds, default=0.25, help="--follow: seconds between polls")
    g.add_argument("--batch-size", type=positive_int, default=256, help="finished sessions scored per model call")
    m = p.add_argument_group("monitoring the detector")
    m.add_argument("--metrics-file", metavar="PATH",
                   help="keep Prometheus counters (the names of serve's /metrics) in PATH, rewritten atomically: "
                        "for node_exporter's textfile collector beside a `detect --follow`")
    m.add_argument("--metrics-interval", type=positive_seconds, default=15.0,
                   help="--metrics-file: seconds between rewrites at most (default 15)")


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    import signal
    import sys
    import threading

    from fusionlog.data.logfiles import expand_log_source, is_multi_source
    from fusionlog.errors import ConfigError, DataError
    from fusionlog.explain import largest_departure
    from fusionlog.folder_state import FolderFollowState
    from fusionlog.follow_state import FollowState
    from fusionlog.io import open_appending
    from fusionlog.multifollow import MultiFollow
    from fusionlog.stream import (
        ReadProgress,
        StreamLimits,
        detect_stream,
        files_lines,
        follow,
        load_scorer,
        read_stream,
        scorer_sessionizer,
    )
    from fusionlog.types import ReadStats

    logger = logging.getLogger("fusionlog.detect")
    sources = list(args.source) or ["-"]
    stdin = sources == ["-"]
    if "-" in sources and not stdin:
        raise ConfigError("read either stdin (-) or files, not both")
    many = not stdin and (len(sources) > 1 or is_multi_source(sources[0]))
    if args.follow and stdin:
        raise ConfigError("--follow needs a FILE, a directory or a glob (stdin is followed anyway)")
    if stdin and sys.stdin is None:  # started with stdin closed (`<&-`, some service managers)
        raise ConfigError("no FILE given and stdin is closed: give a log file, or pipe lines in")
    if args.state and not args.follow:
        raise ConfigError("--state needs --follow (a finished file is read whole; stdin has no position to keep)")
    # a followed directory or glob may match nothing yet: its files are waited for
    files = [] if stdin or (args.follow and many) else [f for s in sources for f in expand_log_source(s)]
    missing = [str(f) for f in files if not f.exists()]  # exists, not is_file: a pipe or /dev/stdin will do
    if missing:
        raise DataError(f"log file(s) not found: {', '.join(missing[:5])}")
    if args.follow and files and is_gzip(files[0]):
        raise ConfigError(f"{files[0]} is gzip-compressed: such a file no longer grows, so read it without --follow")
    if args.output and (read := output_among_inputs(args.output, sources, files)):
        raise ConfigError(f"--output {args.output}: it is {read}, which detect reads; write the verdicts elsewhere")
    live = args.follow or stdin
    idle = args.idle_seconds if args.idle_seconds is not None else (3_600.0 if live else None)
    wall = args.wall_idle_seconds if args.wall_idle_seconds is not None else (30.0 if live else None)
    limits = StreamLimits(
        max_open_sessions=args.max_open_sessions,
        max_events_per_session=args.max_events,
        idle_seconds=idle or None,
        wall_idle_seconds=wall or None,
    )
    scorer = load_scorer(args.model)
    sessionizer = scorer_sessionizer(scorer, limits, examples=args.examples)
    read_stats = ReadStats()
    stop = threading.Event()
    followed = progress = None
    state = None
    if args.state:
        state = FolderFollowState(args.state, sources) if many else FollowState(args.state, files[0])
    if stdin:
        from pathlib import Path

        from fusionlog.data.readers import unpacked

        def unpack(fh):
            return unpacked(fh, Path("<stdin>"), read_stats) if hasattr(fh, "peek") else fh

        lines = read_stream(sys.stdin.buffer, read_stats, stop=stop, heartbeat=args.poll_interval * 2, unpack=unpack)
    elif args.follow and many:
        followed = MultiFollow(sources, read_stats, stop=stop, poll_interval=args.poll_interval,
                               from_end=args.from_end, keep_position=state is not None,
                               resume=state.resume_folder if state is not None else None)
        if state is not None:
            state.attach(followed)
        followed.on_turn = sessionizer.from_file  # a trace's exception line goes with its own file's record
        lines = iter(followed)
    elif args.follow:
        lines = follow(files[0], read_stats, stop=stop, poll_interval=args.poll_interval,
                       from_end=args.from_end and not (state and state.resumed),
                       position=state.position if state else None, resume=state.resume if state else None)
    else:
        # a bar on stderr, unless the verdicts themselves go to that terminal
        wanted = not getattr(args, "quiet", False) and bool(args.output or not sys.stdout.isatty())
        progress = ReadProgress(files, show=None if wanted else False)
        lines = files_lines(files, read_stats, logger, progress, on_file=sessionizer.from_file)
    saved: dict = {}
    if live and threading.current_thread() is threading.main_thread():
        # First Ctrl-C / SIGTERM: stop reading; open sessions are still scored and written. Second: abort.
        def _stop(signum, frame) -> None:
            logger.info("stopping: %s (Ctrl-C again to abort)",
                        "saving where it is (--state)" if state else "scoring open sessions")
            stop.set()
            signal.signal(signal.SIGINT, signal.default_int_handler)

        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, _stop)
    if live and hasattr(scorer, "refresh_feedback"):
        lines = follow_feedback(lines, scorer)
    metrics = None
    if args.metrics_file:
        from fusionlog.metrics_file import MetricsFile

        metrics = MetricsFile(args.metrics_file, sessionizer, scorer, interval=args.metrics_interval,
                              read_stats=read_stats)
        lines = metrics.lines(lines)
    # with --state a restart goes on writing after the verdicts the earlier run wrote
    try:
        if args.output and state is not None:
            out = open_appending(args.output, "--output", logger)
        else:
            out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"--output {args.output}: cannot write it ({exc.strerror or exc})") from None
    t0 = time.perf_counter()
    written = anomalous = 0
    causes: Counter[str] = Counter()  # an anomalous verdict's largest departure, for the closing digest
    watch = FitWatch(sessionizer, scorer, logger)
    pool_share = getattr(scorer, "pool_flagged_share", None)
    drift = DriftWatch(pool_share, args.model, logger, recent=metrics.recent if metrics else None) if live else None
    finished = False
    try:
        for verdict in detect_stream(scorer, watch.lines(lines), limits, batch_size=args.batch_size,
                                     sessionizer=sessionizer, checkpoint=state):
            if metrics is not None:
                metrics.record(verdict)
            if drift is not None:
                drift.record(verdict["anomalous"], counted=metrics is not None)
            if verdict["anomalous"]:
                anomalous += 1
                if cause := largest_departure(verdict.get("departures") or ()):
                    causes[f"{cause[0]} '{cause[1]}'"] += 1
            if args.anomalies_only and not verdict["anomalous"]:
                continue
            try:
                out.write(json.dumps(verdict, ensure_ascii=False) + "\n")
                written += 1
                if live:
                    out.flush()
            except BrokenPipeError:
                raise  # the reader went away (`detect ... | head`): the CLI stops quietly
            except OSError as exc:  # a full disk: say which output, not only the errno's words
                raise unwritable(args.output, exc) from None
        finished = True
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if metrics is not None:
            metrics.write(up=False)
        close_output(out, args.output, report=finished)
        if state is not None:
            state.close()
        if progress is not None:
            progress.close()
    elapsed = time.perf_counter() - t0
    stats = sessionizer.stats.to_dict()
    n_files = followed.files_read if followed is not None else len(files)
    stats.update(decode_errors=read_stats.decode_errors, truncated=read_stats.truncated, files=n_files,
                 empty_files=read_stats.empty_files, truncated_files=read_stats.truncated_files,
                 unreadable_files=read_stats.unreadable_files,
                 anomalous=anomalous, written=written, seconds=round(elapsed, 3))
    watch.final()
    logger.info(
        "detect: %s%d lines, %d sessions (%d anomalous, %d evicted, %d split), %d skipped lines%s%s, %.0f lines/s",
        _files_read(stats), stats["lines"], stats["sessions"], anomalous, stats["evicted"], stats["split"],
        stats["skipped"], _why_skipped(stats), _repaired(stats), stats["lines"] / max(elapsed, 1e-6),
    )
    if state is not None and sessionizer.open_sessions:
        logger.info("detect: %d open session(s) left open for the next run (--state %s)", sessionizer.open_sessions,
                    args.state)
    if causes:
        logger.info("detect: anomalous sessions by their largest departure: %s", _digest(causes))
    if hint := drift_hint(anomalous, stats["sessions"], pool_share, args.model):
        logger.warning("detect: %s", hint)
    logger.debug("detect stats: %s", json.dumps(stats))
    return 1 if read_stats.unreadable_files else 0  # finished, but not every line was read: a script should know


#: Lines between two looks at feedback.json in a live detect (heartbeats look too).
FEEDBACK_CHECK_LINES = 4096


def follow_feedback(lines, scorer, every: int = FEEDBACK_CHECK_LINES):
    """`lines` unchanged; a change to the model's feedback.json (`fusionlog mute`) or baseline.json (`fusionlog
    baseline`) is applied on the next heartbeat or within `every` lines, keeping template ids (open sessions
    hold them): no restart."""
    n = 0
    for line in lines:
        if line is None:
            scorer.refresh_feedback(keep_ids=True)
        else:
            n += 1
            if n % every == 0:
                scorer.refresh_feedback(keep_ids=True)
        yield line


def _digest(causes: Counter[str], top: int = 5) -> str:
    """`has 'X' 16, new 'Y' 9, ... (12 more)`: what to look at first when many sessions are flagged."""
    parts = [f"{cause[:150]} {n}" for cause, n in causes.most_common(top)]
    rest = len(causes) - top
    return ", ".join(parts) + (f" ({rest} more)" if rest > 0 else "")


def _why_skipped(stats: dict) -> str:
    """' (no session key 380, ...)': a user whose lines vanish needs to know which setting to check."""
    reasons = skip_reasons(stats, ("unmatched_format", "no_session_key", "empty"))
    text = f" ({', '.join(reasons)})" if reasons else ""
    if stats["continuation"]:
        text += f", {stats['continuation']} continuation lines"
    if stats.get("exception_lines"):
        text += f", {stats['exception_lines']} trace lines naming an exception (read as events)"
    return text


def is_gzip(path) -> bool:
    """Whether the file starts as gzip does (followed, its compressed bytes were read as lines of garbage)."""
    from pathlib import Path

    from fusionlog.data.readers import GZIP_MAGIC

    if not Path(path).is_file():  # a FIFO's bytes would be taken from the follow
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == GZIP_MAGIC
    except OSError:
        return False  # the follow says what is wrong with it


def unwritable(name: str | None, exc: OSError):
    """The error for an output the verdicts could not be written to, naming it (`-o`, or stdout)."""
    from fusionlog.errors import DataError

    return DataError(f"{name or 'stdout'}: cannot write the verdicts ({exc.strerror or exc})")


def close_output(out, name: str | None, report: bool) -> None:
    """Flush and close the verdicts' output; a failure is an error naming it once the run finished, and stays
    quiet while another error is on its way out (which it would otherwise replace)."""
    import sys

    try:
        out.flush()
        if out is not sys.stdout:
            out.close()
    except OSError as exc:
        if report and isinstance(exc, BrokenPipeError):
            raise
        if report:
            raise unwritable(name, exc) from None


def output_among_inputs(output: str, sources: list[str], files: list) -> str | None:
    """The input `--output` would overwrite or feed back into, if any.

    Why: opened for writing, an input given as `-o` was emptied before a line of it was read (the log lost, rc 0);
    a verdicts file inside a followed folder or matching a followed glob would be read back as a log line by line.
    """
    import fnmatch
    import os
    from pathlib import Path

    out = Path(output)
    if out.exists():
        for f in files:
            try:
                if os.path.samefile(out, f):
                    return str(f)
            except OSError:
                continue
    where = os.path.abspath(output)
    for source in sources:
        if Path(source).is_dir() and os.path.abspath(os.path.dirname(where)) == os.path.abspath(source):
            return f"in the folder {source}"
        if not Path(source).is_file() and fnmatch.fnmatch(where, os.path.abspath(source)):
            return f"matched by {source}"
    return None


def _repaired(stats: dict) -> str:
    """', 1000 lines with bytes not UTF-8 (replaced), 2 lines cut at 1 MiB': read, but not as written. Why say it:
    a latin-1 log reads as mostly new templates, and the summary was the only place that could tell why."""
    notes = [f"{stats['decode_errors']} lines with bytes not UTF-8 (replaced)"] if stats["decode_errors"] else []
    if stats["truncated"]:
        notes.append(f"{stats['truncated']} lines cut at {MAX_LINE_BYTES:,} bytes")
    return "".join(f", {n}" for n in notes)


def _files_read(stats: dict) -> str:
    """'3 files (1 empty, 1 damaged gzip read up to the damage), ': said only when several or damaged files."""
    notes = [f"{stats['empty_files']} empty"] if stats["empty_files"] else []
    if stats.get("unreadable_files"):
        notes.append(f"{stats['unreadable_files']} not read to the end, see the warnings")
    if stats["truncated_files"]:
        notes.append(f"{stats['truncated_files']} damaged gzip read up to the damage")
    if stats["files"] <= 1 and not notes:
        return ""
    return f"{stats['files']} files" + (f" ({', '.join(notes)})" if notes else "") + ", "
