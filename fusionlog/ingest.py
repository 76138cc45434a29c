"""Raw lines posted by a log shipper, kept in open sessions across requests (`POST /v1/ingest` of `serve`).

Why: `/v1/detect` scores each request on its own and closes every session at its end. A shipper (Fluent Bit,
Vector, Logstash's http output) batches lines by size and time, not by session: a request id's lines straddle
two posts, and each half scored alone lacks the other half's steps, so ordinary sessions are flagged (a Java
trace cut from its record loses its exception too). An ingest stream is `detect --follow` behind HTTP: one
sessionizer per named stream (a pod, a file), whose sessions close by the artifact's rule (a window full, a
later time window, a key idle for `idle_seconds` of log time) or after `wall_idle_seconds` without a line
(polled in the background, so a stream that goes quiet still gets its last verdicts). Shippers ignore response
bodies, so every verdict also goes where an operator looks: a JSONL file (`serve --verdicts`), one warning log
line per anomalous session, and serve's /metrics. A shutdown scores and writes every open session.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionlog.errors import ConfigError
from fusionlog.io import open_appending
from fusionlog.journal import StreamJournal, journals, read_journal
from fusionlog.stream import (
    StreamLimits,
    StreamSessionizer,
    finished_verdicts,
    parts_at_start,
    scorer_sessionizer,
    size_closed,
)
from fusionlog.watch import FitWatch

logger = logging.getLogger(__name__)

DEFAULT_STREAM = "default"
#: What a stream may be called: it is echoed in verdicts and logs, and bounded in length.
STREAM_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,100}")
#: Where a shipper's record object keeps the raw line: Fluent Bit and Docker `log`, Vector and Logstash
#: `message`, others `msg` / `line`.
LINE_KEYS = ("log", "message", "msg", "line")
#: Counters of a stream's reading, as `/v1/detect` reports them per request.
READ_COUNTS = ("lines", "events", "empty", "continuation", "exception_lines", "unmatched_format", "no_session_key",
               "evicted", "split")


class StreamsFull(ConfigError):
    """Every stream slot holds open sessions: a matter of capacity (serve answers 503), not a bad request."""


@dataclass(frozen=True)
class IngestConfig:
    """Bounds and timeouts of the ingest streams, and where their verdicts go (defaults: `detect --follow`'s)."""

    verdicts_path: str | None = None  # JSONL, appended; None: log lines and metrics only
    anomalies_only: bool = False  # the file gets only anomalous verdicts
    max_streams: int = 64
    idle_seconds: float | None = 3_600.0  # key sessions: log time without a line
    wall_idle_seconds: float | None = 30.0  # any session: wall time without a line (background poll)
    max_open_sessions: int = 10_000  # per stream
    max_events: int = 1_000  # per session; a longer one is scored in parts
    examples: bool = False  # each verdict's top templates and has/new departures carry their first raw line
    journal_dir: str | None = None  # write-ahead journal of each stream's lines (`fusionlog.journal`)
    journal_sync: bool = False  # each post's journal entry synced to disk before it is read (survives a power loss)

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ConfigError(f"max_streams={self.max_streams}: must be >= 1")
        if self.verdicts_path is not None and not Path(self.verdicts_path).parent.is_dir():
            raise ConfigError(f"--verdicts {self.verdicts_path}: its folder does not exist")
        if self.journal_dir is not None and not Path(self.journal_dir).is_dir():
            raise ConfigError(f"--journal {self.journal_dir}: not a folder (create it first)")
        if self.journal_sync and self.journal_dir is None:
            raise ConfigError("--journal-sync needs --journal DIR")

    def limits(self) -> StreamLimits:
        return StreamLimits(max_open_sessions=self.max_open_sessions, max_events_per_session=self.max_events,
                            idle_seconds=self.idle_seconds or None, wall_idle_seconds=self.wall_idle_seconds or None)


def stream_name(name: str | None) -> str:
    """A valid stream name (None: the default stream), or a `ConfigError` saying what is allowed."""
    if name is None or name == "":
        return DEFAULT_STREAM
    if not STREAM_NAME.fullmatch(name):
        raise ConfigError(f"stream {name[:120]!r}: use 1-100 letters, digits and _ . : / -")
    return name


def record_line(item: Any, json_model: bool, where: str) -> str:
    """One posted item as the raw line the model reads: a string as it is; a shipper's record object by its line
    field (`LINE_KEYS`), or for a model trained on JSON lines the record itself (a `log` field holding a JSON
    object's text is that record: Docker's json-file as Fluent Bit forwards it)."""
    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: a {type(item).__name__}; send raw lines as strings or records as objects")
    line = next((item[k] for k in LINE_KEYS if isinstance(item.get(k), str)), None)
    if json_model:
        if line is not None and line.lstrip().startswith("{"):
            return line.rstrip("\r\n")
        return json.dumps(item, ensure_ascii=False)
    if line is None:
        raise ConfigError(f"{where}: a record without a line; this model reads text lines, looked for in the "
                          f"fields {', '.join(LINE_KEYS)}")
    return line.rstrip("\r\n")


#: Anomalous sessions logged one by one per minute at most; the rest of a flood is one line a minute.
WARNINGS_PER_MINUTE = 20


class VerdictSink:
    """Where finished verdicts go besides the response: the JSONL file, a warning per anomaly, the counters.

    The warnings are capped (`WARNINGS_PER_MINUTE`): a release can flag every session, and tens of thousands of
    log lines a minute would bury the one that says so; the file and the metrics still count every verdict. A
    failed write (a full disk) warns once and ingest goes on: the log lines and metrics still carry the verdicts.
    """

    def __init__(self, config: IngestConfig, record=None, clock=time.monotonic) -> None:
        self.config = config
        self.record = record  # called with each verdict (serve's metrics)
        self._fh = open_appending(config.verdicts_path, "--verdicts", logger) if config.verdicts_path else None
        self._failed = False
        self.written = 0
        self._clock = clock
        self._minute = clock()
        self._warned = self._quiet = 0  # this minute: anomalies logged, and not logged

    def take(self, stream: str, verdicts: list[dict]) -> None:
        lines = []
        for v in verdicts:
            v["stream"] = stream
            if self.record is not None:
                self.record(v)
            if v["anomalous"]:
                self._warn(stream, v)
            if self._fh is not None and (v["anomalous"] or not self.config.anomalies_only):
                lines.append(json.dumps(v, ensure_ascii=False) + "\n")
        if lines and self._fh is not None:
            try:
                self._fh.writelines(lines)
                self._fh.flush()
                self.written += len(lines)
            except OSError as exc:
                if not self._failed:
                    logger.warning("cannot write verdicts to %s (%s); they are still logged and counted",
                                   self.config.verdicts_path, exc)
                self._failed = True

    def _warn(self, stream: str, v: dict) -> None:
        now = self._clock()
        if now - self._minute >= 60.0:
            if self._quiet:
                logger.warning("%d more anomalous session(s) in the last minute not logged one by one%s",
                               self._quiet, f" (all in {self.config.verdicts_path})" if self._fh else "")
            self._minute, self._warned, self._quiet = now, 0, 0
        if self._warned >= WARNINGS_PER_MINUTE:
            self._quiet += 1
            return
        self._warned += 1
        departures = v.get("departures") or ()
        cause = (departures[0]["kind"], departures[0]["template"]) if departures else None  # the largest
        logger.warning("anomalous session %s (stream %s, score %.3f)%s", v["key"], stream, v["score"],
                       f": {cause[0]} {cause[1]!r}" if cause else "")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class IngestStreams:
    """The open sessions of every named stream over one scorer. Not thread-safe: the caller holds the scorer's
    lock around each call, as the scorer itself needs."""

    def __init__(self, scorer, config: IngestConfig, sink: VerdictSink) -> None:
        self.scorer = scorer
        self.config = config
        self.sink = sink
        self._limits = config.limits()
        self._streams: dict[str, StreamSessionizer] = {}
        self._fit: dict[str, FitWatch] = {}  # says once when a stream's first lines give the detector nothing
        self._journals: dict[str, StreamJournal] = {}  # with `journal_dir`: each stream's write-ahead journal

    def _open_stream(self, stream: str, journal: StreamJournal | None = None) -> StreamSessionizer:
        if len(self._streams) >= self.config.max_streams and not self._drop_an_idle_stream():
            raise StreamsFull(f"{len(self._streams)} streams hold open sessions, the limit (serve --max-streams); "
                              f"post to one of them, or flush one: POST /v1/ingest/flush")
        # a parser of its own: a runtime's chunk held at the end of a post is joined with this stream's next
        sz = self._streams[stream] = scorer_sessionizer(self.scorer, self._limits, examples=self.config.examples)
        self._fit[stream] = FitWatch(sz, self.scorer, logger, where=f"ingest stream {stream!r}: ")
        if journal is None and self.config.journal_dir is not None:
            journal = StreamJournal(Path(self.config.journal_dir), stream, sync=self.config.journal_sync)
        if journal is not None:
            self._journals[stream] = journal
        return sz

    def _drop_an_idle_stream(self) -> bool:
        """Forget the oldest stream that holds nothing a later line could need, to make room for a new one; False
        when every stream holds some. Why: a stream is named by whoever posts (a pod, a file), and pods come and
        go; kept forever, the names of pods long gone would refuse every new one once --max-streams were used.

        Nothing is lost: no open session, no runtime chunk held for the rest of its line (`oldest_open_line` is
        None), and so a journal with nothing to replay (`journal.settle` emptied it). What goes is only the reading
        position (window phase, line numbers), which a stream that comes back starts anew, as a new stream does."""
        for name, sz in self._streams.items():
            if sz.open_sessions == 0 and sz.oldest_open_line() is None:
                del self._streams[name]
                self._fit.pop(name, None)
                journal = self._journals.pop(name, None)
                if journal is not None:
                    journal.remove()
                logger.info("ingest stream %r dropped: it held no open session and a new stream needed its place "
                            "(--max-streams %d)", name, self.config.max_streams)
                return True
        return False

    def feed(self, stream: str, lines: list[str]) -> tuple[list[dict], dict[str, int]]:
        """Add lines to a stream: (verdicts of the sessions they finished, what reading them counted)."""
        sz = self._streams.get(stream) or self._open_stream(stream)
        journal = self._journals.get(stream)
        if journal is not None:
            journal.lines_added(lines)  # before reading them: a crash from here on loses none
        before = sz.stats.to_dict()
        done = []
        cuts = []  # sessions the size limit closed, by line: a replay closes them there too
        for line in lines:
            got = sz.feed(line)
            if got:
                done += got
                if journal is not None and (cut := size_closed(got)):
                    cuts.append((sz.line_no, [(s.key, s.part) for s in cut]))
        if cuts:
            journal.cut(cuts)  # before their verdicts are written
        self._fit[stream].fed()
        after = sz.stats.to_dict()
        verdicts = self._score(stream, done)
        self._written(stream, sz)
        return verdicts, {k: after[k] - before[k] for k in READ_COUNTS}

    def _written(self, stream: str, sz: StreamSessionizer) -> None:
        """The verdicts of what the stream's lines so far finished are written: mark it in the journal, and let
        the journal shrink to what the open sessions need."""
        journal = self._journals.get(stream)
        if journal is not None:
            journal.written_through(sz.line_no)
            journal.settle(sz.line_no, sz.oldest_open_line(), sz.split_parts(), sz.carry())

    def poll(self) -> list[dict]:
        """Close and score the sessions idle for `wall_idle_seconds` in every stream."""
        out = []
        for name, sz in list(self._streams.items()):
            done = sz.poll()
            if not done:
                continue
            out += self._score(name, done)
            journal = self._journals.get(name)
            if journal is not None:
                journal.closed([s.key for s in done])
                journal.settle(sz.line_no, sz.oldest_open_line(), sz.split_parts(), sz.carry())
        return out

    def flush(self, stream: str | None = None) -> list[dict]:
        """Close and score every open session of one stream (or of all: at shutdown); a flushed stream is gone."""
        names = list(self._streams) if stream is None else [stream]
        if stream is not None and stream not in self._streams:
            raise ConfigError(f"no open stream {stream!r}; open: {', '.join(sorted(self._streams)) or 'none'}")
        out = []
        for name in names:
            self._fit.pop(name, None)
            out += self._score(name, self._streams.pop(name).flush())
            journal = self._journals.pop(name, None)
            if journal is not None:
                journal.remove()
        return out

    def recover(self) -> dict[str, int]:
        """Rebuild the streams a previous serve's journals hold (`journal_dir`) as they were when it stopped:
        sessions finished after its last written verdicts are scored now, the others are open again. Returns
        the open sessions per recovered stream."""
        if self.config.journal_dir is None:
            return {}
        recovered = {}
        for path in journals(Path(self.config.journal_dir)):
            try:
                replay = read_journal(path)
                name = stream_name(replay.stream)
            except (ConfigError, OSError) as exc:
                logger.warning("ingest journal %s: not replayed (%s)", path, exc)
                continue
            if name in self._streams:
                logger.warning("ingest journal %s: stream %r is already open; not replayed", path, name)
                continue
            sz = self._open_stream(name, StreamJournal.resume(path, replay, sync=self.config.journal_sync))
            sz.start_at(replay.base, replay.carry)
            # (a journal rewritten from before the oldest open session marks every verdict up to then written, so a
            # continuation closed since its first line closes silently: its part needs no record, unlike `--state`'s)
            sz.expect_parts({**replay.parts, **parts_at_start(replay.cuts, ())})
            late = []
            for entry in replay.entries:
                if isinstance(entry, str):
                    done = sz.feed(entry)
                    for key, part in replay.cuts.get(sz.line_no, ()):
                        done = [*done, *sz.cut(key, part)]  # filled up in the first run, not in this copy
                    if done and sz.line_no > replay.done:
                        late += done
                else:
                    sz.close_keys(entry)  # a wall-idle close: its verdicts were written
            self._fit[name].fed()
            verdicts = self._score(name, late)
            self._written(name, sz)
            recovered[name] = sz.open_sessions
            logger.info("ingest journal: stream %r recovered from %s: %d line(s) replayed, %d session(s) open again, "
                        "%d finished but unwritten scored now%s", name, path.name, sz.line_no - replay.base,
                        sz.open_sessions, len(verdicts),
                        "".join([f", {replay.skipped} unreadable entr(y/ies) skipped" if replay.skipped else "",
                                 f", {replay.uncommitted} line(s) of a post the crash cut dropped (never answered: "
                                 f"the shipper sends them again)" if replay.uncommitted else ""]))
        return recovered

    def close(self) -> None:
        """Close the journal files (they stay: a flush removes a stream's, a crash leaves them for `recover`)."""
        for journal in self._journals.values():
            journal.close()

    def open_sessions(self) -> dict[str, int]:
        return {name: sz.open_sessions for name, sz in self._streams.items()}

    def _score(self, stream: str, done: list) -> list[dict]:
        verdicts = finished_verdicts(self.scorer, done)
        self.sink.take(stream, verdicts)
        return verdicts
