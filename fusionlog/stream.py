"""Live logs → finished sessions → verdicts, with bounded memory.

`StreamSessionizer` is the streaming twin of `fusionlog.data.sessionize`: it takes raw lines one at a
time (header parsed with the artifact's loghub format, Content → event id through the scorer) and emits
a session as soon as it is finished:

* `lines` rule: the window is full; `time` rule: a line of a later time window arrives;
* `key` rule: the key has been idle longer than `idle_seconds` in *log* time (the newest timestamp
  seen), or longer than `wall_idle_seconds` in wall time (checked by `poll()`, for quiet live logs);
* any rule: `flush()` at end of input.

Memory is bounded: at most `max_open_sessions` open keys (the least recently updated one is evicted)
and at most `max_events_per_session` events per session (a full session is emitted and the key starts
a new part). Evicted and split sessions are *emitted and scored*, never dropped, and counted.

With no limit hit, the sessions equal the batch sessionizer's (same keys, same event ids), so streaming
detection scores exactly what the in-process detector scores.

`follow(path)` reads a growing file like `tail -F` (polling; survives truncation and rotation) and
`read_stream(fh)` reads a pipe; both yield `None` heartbeats while no line arrives, so callers can run
wall-clock timeouts, and both stop when a `threading.Event` is set. `detect_stream` ties it together.
"""

from __future__ import annotations

import codecs
import logging
import os
import queue
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO

from fusionlog.config import SessionRule
from fusionlog.constants import MAX_LINE_BYTES
from fusionlog.data.containers import UNWRAPPED_LINE
from fusionlog.data.formats import (
    TIME_FIELDS,
    TimeReader,
    compile_format,
    epoch_seconds,
    header_reader,
    is_structured_format,
)
from fusionlog.data.readers import decode_line
from fusionlog.data.sessionize import TimeWindowKeys
from fusionlog.data.traces import TraceTail
from fusionlog.errors import ConfigError, DataError
from fusionlog.follow_state import HEAD_BYTES, FilePosition, FollowState, ResumeAt
from fusionlog.types import ReadStats

logger = logging.getLogger(__name__)


#: Why a session was emitted.
CLOSED_WINDOW = "window"  # lines rule: window full; time rule: a later window began
CLOSED_IDLE = "idle"  # key rule: no line for idle_seconds of log time
CLOSED_WALL_IDLE = "wall_idle"  # no line for wall_idle_seconds of wall time (poll)
CLOSED_EVICTED = "evicted"  # too many open sessions: the least recently updated one went out
CLOSED_SIZE = "size"  # max_events_per_session reached: emitted, the key continues as a new part
CLOSED_FLUSH = "flush"  # end of input


@dataclass(frozen=True)
class StreamLimits:
    """Bounds and timeouts of the streaming sessionizer (defaults suit one busy service's logs)."""

    max_open_sessions: int = 10_000
    max_events_per_session: int = 1_000
    idle_seconds: float | None = 3_600.0  # key rule, log time; None = only size/eviction/flush close
    wall_idle_seconds: float | None = None  # any rule, wall time, checked by poll(); None = never

    def __post_init__(self) -> None:
        if self.max_open_sessions < 1:
            raise ConfigError(f"StreamLimits.max_open_sessions={self.max_open_sessions}: must be >= 1")
        if self.max_events_per_session < 1:
            raise ConfigError(f"StreamLimits.max_events_per_session={self.max_events_per_session}: must be >= 1")
        for name in ("idle_seconds", "wall_idle_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"StreamLimits.{name}={value}: must be > 0 or None")


@dataclass(frozen=True)
class StreamCarry:
    """What a sessionizer holds between two lines besides its open sessions: where a replay from that point must
    begin to cut, name and close the sessions the first run did.

    Why: a restart (`--state`) replays from a mark at or before the oldest open session's first line, often inside
    a window or after log time that went back (a folder of hosts with their own clocks). From a blank sessionizer
    the replay counted a line window from the wrong record, opened the rest of a window the size limit had cut under
    a key of its own first line (`lines:43` for `lines:41`), named a reopened time window `time:B` for `time:B.1`,
    and closed log-time-idle sessions against an older "now". The trace tail (the last record and how many exception
    lines it has taken): a replay that began right after a record whose session had closed (by size, or idle) read
    the traceback's exception line under no record and lost that event."""

    phase: int = 0  # lines rule: records in the window in progress
    window: str | None = None  # window rules: the key the window in progress goes on under
    bucket: int | None = None  # time rule: the last window's bucket
    log_now: float | None = None  # the newest log time so far (log-time idleness is measured from it)
    latest: int | None = None  # `TimeWindowKeys`: the latest bucket ...
    again: int = 0  # ... and the windows reopened on earlier ones so far
    tail_line: str | None = None  # the last record's line (its keys for an exception line; "" for windows) ...
    tail_time: float | None = None  # ... its log time ...
    tail_kept: int = 0  # ... and the exception lines it has taken (`TraceTail`)
    file: str | None = None  # a folder's follow: the file the lines come from now (`from_file`) ...
    parked: tuple[tuple[str, str, float | None, int], ...] = ()  # ... the other files' tails: (file, line, time, kept)

    def to_json(self) -> dict:
        """The fields that differ from a blank sessionizer's (most states hold one or two)."""
        return {name: list(map(list, value)) if name == "parked" else value
                for name, value in asdict(self).items() if value != getattr(BLANK_CARRY, name)}

    @classmethod
    def from_json(cls, obj: Mapping) -> StreamCarry:
        """TypeError/ValueError for an object that is not one."""

        def opt(name: str, kind):
            return None if obj.get(name) is None else kind(obj[name])

        return cls(int(obj.get("phase", 0)), opt("window", str), opt("bucket", int), opt("log_now", float),
                   opt("latest", int), _reopened(obj.get("again", 0)),
                   opt("tail_line", str), opt("tail_time", float), int(obj.get("tail_kept", 0)), opt("file", str),
                   tuple((str(f), str(line), None if ts is None else float(ts), int(kept))
                         for f, line, ts, kept in obj.get("parked", ())))


BLANK_CARRY = StreamCarry()


def _tail_of(line: str | None, ts: float | None, kept: int) -> TraceTail:
    """A trace tail as a carry saved it (blank without a record line)."""
    tail: TraceTail = TraceTail()
    if line is not None:
        tail.record((line, ts))
        tail.kept = kept
    return tail


def _reopened(saved) -> int:
    """A carry's count of reopened windows; a mark of stop 29 saved [bucket, count] pairs: their sum, so the windows
    named after it (`time:B.n`, n above the sum) take no earlier window's key."""
    if isinstance(saved, list):
        return sum(int(n) for _, n in saved)
    return int(saved)


@dataclass
class FinishedSession:
    key: str
    event_ids: list[int]
    start: float | None
    end: float | None
    closed_by: str
    part: int = 0  # > 0 for the continuation of a key that hit max_events_per_session (0 again after another close)
    first_line: int = 0
    last_line: int = 0
    # with `examples`: event id -> (line number, raw line) of its first line in the session
    examples: dict[int, tuple[int, str]] | None = None


#: Example lines kept per open session at most (one per distinct template), and their length.
MAX_EXAMPLES = 64
MAX_EXAMPLE_CHARS = 500
#: Files whose trace tails a folder's follow keeps besides the one read now (the least recently read go first).
MAX_PARKED_TAILS = 4096


def note_example(examples: dict[int, tuple[int, str]], eid: int, line_no: int, text: str) -> None:
    """Keep the first raw line of each template (bounded), so a verdict can show the line itself."""
    if eid not in examples and len(examples) < MAX_EXAMPLES:
        examples[eid] = (line_no, text[:MAX_EXAMPLE_CHARS])


@dataclass
class StreamStats:
    """Counts of the stream so far; every line is accounted for and every closed session counted."""

    read: ReadStats = field(default_factory=ReadStats)  # lines, empty, unmatched_format, no_session_key, ...
    events: int = 0
    sessions: int = 0
    closed_by: Counter = field(default_factory=Counter)
    max_open: int = 0  # high-water mark of open sessions

    @property
    def evicted(self) -> int:
        return self.closed_by[CLOSED_EVICTED]

    @property
    def split(self) -> int:
        return self.closed_by[CLOSED_SIZE]

    def to_dict(self) -> dict:
        return {
            **self.read.to_dict(),
            "events": self.events,
            "sessions": self.sessions,
            "evicted": self.evicted,
            "split": self.split,
            "max_open": self.max_open,
            "closed_by": dict(sorted(self.closed_by.items())),
        }


class HeaderParser:
    """A loghub format string applied to raw lines: `parse(line)` → (content, header fields) or None.

    A format of plain space-separated fields ending in `<Content>` (BGL, HPC-like) is split with
    `str.split` instead of the lazy-group regex: same fields for every line with enough tokens and
    several times faster. Lines with fewer tokens fall back to the regex, so results never differ.
    """

    def __init__(self, log_format: str = "<Content>", line_filter: str = "", strip: str = "") -> None:
        """`line_filter`, `strip`: as `RawSpec`'s (a line the filter misses is a continuation line; `strip`
        is cut from the content), so detection reads a line exactly as training did."""
        self.log_format = log_format
        # JSON lines, logfmt, access logs, container lines: fields come from a reader function
        # (`header_reader`), the time as (Timestamp, Time) - epoch first
        self._record = header_reader(log_format) if is_structured_format(log_format) else None
        self.pattern, self.fields = (None, ["Timestamp", "Time", "Level", "Content"]) if self._record else \
            compile_format(log_format)
        self.line_filter, self.strip = line_filter, strip
        try:
            self._keep = re.compile(line_filter) if line_filter else None
            self._strip = re.compile(strip) if strip else None
        except re.error as exc:
            raise ConfigError(f"line_filter={line_filter!r} / strip={strip!r}: not a regular expression ({exc})") \
                from exc
        self.whole_line = self.fields == ["Content"]  # no header: skip the regex
        simple = " ".join(f"<{n}>" for n in self.fields)
        self._split = len(self.fields) - 1 if (log_format == simple and self.fields[-1] == "Content") else 0
        #: the header fields `parse_timestamp` reads, in format order
        self.time_fields = [n for n in self.fields if n in TIME_FIELDS]
        idx = [self.fields.index(n) for n in self.time_fields]
        self._time_of_parts = itemgetter(*idx) if idx else None
        self._ts_memo: dict[object, float | None] = {}
        self._epoch_at = self.time_fields.index("Timestamp") if "Timestamp" in self.time_fields else None
        self._times = TimeReader(memo_size=0)  # the layout that worked last, first (`_ts_memo` remembers)
        #: a container runtime's line last parsed, unwrapped and joined (None for other formats): its session key is
        #: searched there, not in the runtime's JSON
        self.unwrapped: str | None = None

    @property
    def reading(self) -> tuple[str, str, str]:
        """What decides how a line reads; sessionizers may share a parser only when this is equal."""
        return self.log_format, self.line_filter, self.strip

    def reset(self) -> None:
        """End of one input (an HTTP request): drop a container runtime's chunk held for a rest that never came,
        so it is not glued onto the next input's first line."""
        reset = getattr(self._record, "reset", None)
        if reset is not None:
            reset()

    @property
    def holding(self) -> bool:
        """A container runtime's chunk is held for the rest of its line (the line is not read yet)."""
        holding = getattr(self._record, "holding", None)
        return holding is not None and holding()

    def continuation(self, line: str) -> bool:
        """True for a line the system's `line_filter` rejects (a stack-trace line, say): not a record."""
        return self._keep is not None and self._keep.search(line) is None

    def parse(self, line: str) -> tuple[str, dict[str, str] | None] | None:
        """Content of a stripped, non-empty line, or None when the header does not fit the format."""
        out = self._parse(line)
        if out is not None and self._strip is not None:
            return self._cut(out[0]), out[1]
        return out

    def _parse(self, line: str) -> tuple[str, dict[str, str] | None] | None:
        if self.whole_line:
            return line, None
        if self._record is not None:
            fields = self._record(line)
            if not fields:
                return None  # False (a held chunk): none yet
            self.unwrapped = fields.get(UNWRAPPED_LINE)
            return fields["Content"].strip(), fields
        if self._split:
            parts = line.split(None, self._split)
            if len(parts) == self._split + 1:
                return parts[-1], dict(zip(self.fields, parts, strict=True))
        m = self.pattern.match(line)
        if m is None:
            return None
        fields = m.groupdict()
        return (fields.get("Content") or "").strip(), fields

    def _cut(self, content: str) -> str:
        # as `fusionlog.data.raw.read_records`: a content that is all prefix stays as it was
        return self._strip.sub("", content).strip() or content  # type: ignore[union-attr]

    def parse_timed(self, line: str) -> tuple[str, str | tuple[str, ...] | None] | None | bool:
        """Like `parse`, but returns only the time fields' values (a str for one field, else a tuple); False
        for a container runtime's chunk held until the rest of its line."""
        out = self._parse_timed(line)
        if out and self._strip is not None:
            return self._cut(out[0]), out[1]
        return out

    def _parse_timed(self, line: str) -> tuple[str, str | tuple[str, ...] | None] | None | bool:
        if self.whole_line:
            return line, None
        if self._record is not None:
            fields = self._record(line)
            if not fields:
                return fields  # None, or False: a chunk held until the rest of its line (a continuation)
            self.unwrapped = fields.get(UNWRAPPED_LINE)
            return fields["Content"].strip(), (fields.get("Timestamp", ""), fields.get("Time", ""))
        if self._split:
            parts = line.split(None, self._split)
            if len(parts) == self._split + 1:
                return parts[-1], (self._time_of_parts(parts) if self._time_of_parts else None)
        m = self.pattern.match(line)
        if m is None:
            return None
        sig = m.group(*self.time_fields) if self.time_fields else None
        return (m.group("Content") or "").strip(), sig

    def timestamp(self, sig: str | tuple[str, ...] | None) -> float | None:
        """Epoch seconds from `parse_timed`'s time values (`parse_timestamp` semantics), memoised.

        Log times repeat (second resolution), so the memo saves most parsing; a miss first tries the
        layout that worked last time, because a failing strptime costs as much as a working one and
        `parse_timestamp` tries up to nine.
        """
        if sig is None:
            return None
        if self._epoch_at is not None:  # an epoch `Timestamp` field wins, as in parse_timestamp
            epoch = epoch_seconds((sig if isinstance(sig, str) else sig[self._epoch_at]) or "")
            if epoch is not None:
                return epoch
        try:
            return self._ts_memo[sig]
        except KeyError:
            pass
        values = (sig,) if isinstance(sig, str) else sig
        ts = self._times({n: v or "" for n, v in zip(self.time_fields, values, strict=True)})
        if len(self._ts_memo) >= 10_000:
            self._ts_memo.clear()
        self._ts_memo[sig] = ts
        return ts


@dataclass
class _Open:
    key: str
    part: int
    first_line: int
    event_ids: list[int] = field(default_factory=list)
    start: float | None = None
    end: float | None = None
    last_wall: float = 0.0
    last_line: int = 0
    examples: dict[int, tuple[int, str]] | None = None

    def note(self, eid: int, line_no: int, text: str) -> None:
        if self.examples is None:
            self.examples = {}
        note_example(self.examples, eid, line_no, text)

    def add(self, eid: int, ts: float | None, line_no: int) -> None:
        self.event_ids.append(eid)
        self.last_line = line_no
        if ts is not None:
            if self.start is None or ts < self.start:
                self.start = ts
            if self.end is None or ts > self.end:
                self.end = ts  # = the newest log time of the session (what idle closing compares)


_NOTHING: tuple = ()


class StreamSessionizer:
    """Feed raw lines, get finished sessions back. One instance per stream; not thread-safe."""

    def __init__(
        self,
        event_id: Callable[[str], int],
        rule: SessionRule,
        log_format: str = "<Content>",
        limits: StreamLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        timestamps: bool = True,
        parser: HeaderParser | None = None,
        line_filter: str = "",
        strip: str = "",
        examples: bool = False,
    ) -> None:
        """`timestamps=False` skips time parsing where nothing needs it (no time rule, no log-time idle
        closing, no start/end wanted); `parser` lets many short-lived sessionizers share one parser;
        `line_filter`, `strip`: the system's, as `HeaderParser` reads them; `examples`: keep each session's
        first raw line per template (`FinishedSession.examples`)."""
        self._examples = examples
        self.event_id = event_id
        self.rule = rule
        self.log_format = log_format
        self.limits = limits or StreamLimits()
        self.clock = clock
        self.stats = StreamStats()
        reading = (log_format, line_filter, strip)
        self.parser = parser if parser is not None and parser.reading == reading else HeaderParser(*reading)
        self._key_re = re.compile(rule.key_pattern) if rule.kind == "key" else None
        self._timestamps = timestamps or rule.kind == "time" or (
            rule.kind == "key" and self.limits.idle_seconds is not None
        )
        # key rule: open sessions, least recently updated first; window rules: at most one (`_cur`)
        self._open: OrderedDict[str, _Open] = OrderedDict()
        self._cur: _Open | None = None
        self._parts: dict[str, int] = {}  # key -> next part number, only for keys split since their last other close
        self._line_no = 0
        self._log_now: float | None = None
        self._window_count = 0  # records in the current lines window
        self._split_key: str | None = None  # the window the size limit just closed a part of: it goes on
        self._bucket: int | None = None
        self._wall = self.limits.wall_idle_seconds is not None
        self._max_events = self.limits.max_events_per_session
        self._tail: TraceTail[tuple[str, float | None]] = TraceTail()  # the last record: (line, time)
        self._file: str | None = None  # a folder's follow: the file the lines come from now (`from_file`)
        self._parked: dict[str, TraceTail] = {}  # ... the tails of the other files, as their last turns left them
        self._window_keys = TimeWindowKeys()
        self._held_from: int | None = None  # the first line of a container runtime's chunks held (see oldest_open_line)

    @property
    def open_sessions(self) -> int:
        return len(self._open) + (self._cur is not None)

    @property
    def line_no(self) -> int:
        """Lines fed so far (the number of the last one)."""
        return self._line_no

    def start_at(self, line_no: int, carry: StreamCarry = BLANK_CARRY) -> None:
        """Number the next line `line_no + 1`: a replay continues the stream's numbering. `carry`: what the earlier
        run's sessionizer held after that line (`carry()`), so windows, keys and idleness fall where its did."""
        if self._line_no or self.open_sessions:
            raise ConfigError("start_at: only before the first line")
        self._line_no = line_no
        kind = self.rule.kind
        self._window_count = carry.phase if kind == "lines" else 0
        self._split_key = carry.window if kind in ("lines", "time") else None
        self._bucket = carry.bucket if kind == "time" else None
        self._log_now = carry.log_now
        self._window_keys.latest, self._window_keys.again = carry.latest, carry.again
        self._tail = _tail_of(carry.tail_line, carry.tail_time, carry.tail_kept)
        self._file = carry.file
        self._parked = {f: _tail_of(line, ts, kept) for f, line, ts, kept in carry.parked}

    def carry(self) -> StreamCarry:
        """What a replay that begins after the current line needs besides the open sessions (`start_at`)."""
        window = self._cur.key if self._cur is not None else self._split_key
        line, ts, kept = self._tail_fields(self._tail) or (None, None, 0)
        parked = tuple((f, *fields) for f, tail in self._parked.items() if (fields := self._tail_fields(tail)))
        return StreamCarry(self.window_phase, window, self._bucket, self._log_now, self._window_keys.latest,
                           self._window_keys.again, line, ts, kept, self._file, parked)

    def _tail_fields(self, tail: TraceTail) -> tuple[str, float | None, int] | None:
        """(record line, time, exception lines taken) of a trace tail with a record; a window rule keeps "" for the
        line: a window takes an exception line whatever its record's line says (the state stays small)."""
        if tail.parent is None:
            return None
        line, ts = tail.parent
        return (line if self.rule.kind == "key" else ""), ts, tail.kept

    def from_file(self, name: str) -> None:
        """The lines from here on come from file `name` (`MultiFollow.on_turn`: a folder's follow reads its files in
        turns; `files_lines`' `on_file`: `detect` reads several files one after another). Why: a trace's exception
        line belongs to the last record of its own file. With one tail for the stream, a pod's `ValueError: ...` read
        in the turn after another pod's record went to that record's session (a follower can read a file between the
        record and its trace, when they are written apart), and `detect a.log b.log` gave an exception line at the
        top of b.log to a.log's last record, where training's batch reading starts each file afresh."""
        if name == self._file:
            return
        if self._file is not None:
            self._parked[self._file] = self._tail
            if len(self._parked) > MAX_PARKED_TAILS:
                del self._parked[next(iter(self._parked))]  # the file whose turn is longest past
        self._tail = self._parked.pop(name, None) or TraceTail()
        self._file = name

    @property
    def window_phase(self) -> int:
        """Records in the line window open now (lines rule; else 0). Why: a replay that starts mid-window must
        count on from here, or every later window would be cut elsewhere than the first run cut it."""
        return self._window_count if self.rule.kind == "lines" else 0

    def oldest_open_line(self) -> int | None:
        """The first line of the oldest open session, or of a container runtime's chunks held for the rest of their
        line (None when neither): a replay from there rebuilds every open session and the held line.

        Why the chunks: a line the runtime split (Docker at 16 KiB) is read when its last chunk comes. A replay that
        began between its chunks read the last one alone and lost the record (a `--state` mark or a journal emptied
        there, with nothing open)."""
        firsts = [s.first_line for s in self._open.values()]
        if self._cur is not None:
            firsts.append(self._cur.first_line)
        if self._held_from is not None:
            if self.parser.holding:
                firsts.append(self._held_from)
            else:
                self._held_from = None
        return min(firsts) if firsts else None

    def cut(self, key: str, part: int) -> list[FinishedSession]:
        """Close the session open under `key` as the size limit closed part `part` of it in an earlier run (a
        replay's), numbering the key's next session `part + 1`. Why: a replay begins after the first line of a
        session that was open there and closed later by size; its copy lacks the events before that line, so it
        would not fill up where the first run's did, and the key's later lines would go to other sessions."""
        sess = self._open.pop(key, None)
        if sess is None and self._cur is not None and self._cur.key == key:
            sess, self._split_key = self._cur, key
        if sess is None:  # it filled up in the replay too (it began after the replay's first line)
            return []
        sess.part = part
        self._parts[key] = part + 1
        return [self._finish(sess, CLOSED_SIZE)]

    def split_parts(self) -> dict[str, int]:
        """The next part number of each key the size limit split and that has not closed otherwise since (what a
        replay needs: `expect_parts`); about as many as the open sessions that are continuations."""
        return dict(self._parts)

    def expect_parts(self, parts: Mapping[str, int]) -> None:
        """Number the next session of each key as an earlier run did (a replay's first size close of it says)."""
        for key, part in parts.items():
            if not self._holds(key):
                self._parts[key] = part

    def restart_numbering(self, key: str) -> None:
        """The key's run of parts ended here in an earlier run (a replay's): its next session is part 0 again."""
        if not self._holds(key):
            self._parts.pop(key, None)

    def _holds(self, key: str) -> bool:
        """A session under `key` is open (its part number is its own, not to be set from outside)."""
        return key in self._open or (self._cur is not None and self._cur.key == key)

    def close_keys(self, keys: Collection[str]) -> list[FinishedSession]:
        """Close the open sessions under these keys as a wall-idle `poll` did (a journal's replay of one)."""
        wanted = set(keys)
        done = [self._finish(self._open.pop(k), CLOSED_WALL_IDLE) for k in list(self._open) if k in wanted]
        if self._cur is not None and self._cur.key in wanted:
            done.append(self._finish(self._cur, CLOSED_WALL_IDLE))
            self._window_count = 0
        return done

    # -- input ---------------------------------------------------------------------------------
    def feed(self, line: str) -> Sequence[FinishedSession]:
        """One raw line (without newline); returns the sessions this line finished (often none).

        The hot path: an empty result is a shared empty tuple, not a new list.
        """
        self._line_no += 1
        read = self.stats.read
        read.lines += 1
        text = line.strip()
        if not text:
            read.empty += 1
            return _NOTHING
        if self.parser.continuation(line):  # on the line as read, as the batch reader does: indented = continuation
            return self._not_record(line, read, continuation=True)
        parsed = self.parser.parse_timed(text)
        if not parsed:
            if parsed is False and self._held_from is None:  # a chunk held for the rest of its line
                self._held_from = self._line_no
            return self._not_record(line, read, continuation=parsed is False)
        content, sig = parsed
        ts = self.parser.timestamp(sig) if (sig is not None and self._timestamps) else None
        key_line = line if self.parser.unwrapped is None else self._container_key_line(self.parser.unwrapped, line)
        tail = self._tail
        tail.parent, tail.kept = (key_line, ts), 0  # TraceTail.record, inline: this is the hot path
        return self._place(content, ts, key_line, text)

    def _container_key_line(self, inner: str, raw: str) -> str:
        """Where a container's line is searched for its key: the service's line, unless only the runtime's line
        holds one (an artifact trained before stop 24, whose regex matched Docker's escaped JSON, keeps working)."""
        key_re = self._key_re
        if key_re is None or key_re.search(inner) is not None or key_re.search(raw) is None:
            return inner
        return raw

    def _not_record(self, line: str, read: ReadStats, continuation: bool) -> Sequence[FinishedSession]:
        """A line that is no record: its record's exception event (a trace's `ValueError: ...`), or counted."""
        trace = self._tail.exception(line)
        if trace is not None:
            read.exception_lines += 1
            text, (parent_line, ts) = trace
            return self._place(text, ts, parent_line, line.strip(), trace=True)
        if continuation or self._tail.frame(line):
            read.continuation += 1
        else:
            read.unmatched_format += 1
        return _NOTHING

    def _place(self, content: str, ts: float | None, key_line: str, text: str,
               trace: bool = False) -> Sequence[FinishedSession]:
        """Add one event to its session(s): keys are read from `key_line` (the record's line for a `trace`'s
        exception line, which also joins its record's line window instead of counting as a record)."""
        read = self.stats.read
        kind = self.rule.kind
        if kind == "key":
            keys = self._keys(key_line)
            if not keys:
                read.no_session_key += 1
                return _NOTHING
            eid = self.event_id(content)
            done: list[FinishedSession] = []
            if ts is not None and (self._log_now is None or ts > self._log_now):
                self._log_now = ts
            for key in keys:
                self._add_keyed(key, eid, ts, done, text if self._examples else None)
            if ts is not None and self.limits.idle_seconds is not None:
                self._close_idle_log(done)
            self.stats.events += 1
            return done
        eid = self.event_id(content)
        done = _NOTHING  # type: ignore[assignment]
        cur = self._cur
        if kind == "lines":
            if not trace:  # windows count records; a trace's exception line rides with its record
                if self._window_count % self.rule.window == 0:
                    if cur is not None:
                        done = [self._finish(cur, CLOSED_WINDOW)]
                    cur = self._split_key = None
                    self._window_count = 0
                self._window_count += 1
            if cur is None:
                cur = self._cur = self._new(self._split_key or f"lines:{self._line_no}")
                self.stats.max_open = 1
        else:
            bucket = self._bucket if ts is None else int(ts // self.rule.seconds)
            if cur is not None and bucket != self._bucket:
                done = [self._finish(cur, CLOSED_WINDOW)]
                cur = None
            if cur is None:
                key = self._split_key if bucket == self._bucket else None
                self._bucket = bucket
                cur = self._cur = self._new(key or self._window_keys.key(bucket))
                self.stats.max_open = 1
            self._split_key = None
        cur.add(eid, ts, self._line_no)
        if self._examples:
            cur.note(eid, self._line_no, text)
        if self._wall:
            cur.last_wall = self.clock()
        if len(cur.event_ids) >= self._max_events:
            self._parts[cur.key] = cur.part + 1
            self._split_key = cur.key  # the window goes on under its key as a new part
            done = [*done, self._finish(cur, CLOSED_SIZE)]
        self.stats.events += 1
        return done

    def feed_many(self, lines: Iterable[str]) -> list[FinishedSession]:
        out: list[FinishedSession] = []
        for line in lines:
            out += self.feed(line)
        return out

    def poll(self) -> list[FinishedSession]:
        """Close sessions idle for `wall_idle_seconds` of wall time; call it while the input is quiet."""
        limit = self.limits.wall_idle_seconds
        done: list[FinishedSession] = []
        if limit is None:
            return done
        now = self.clock()
        while self._open:
            sess = next(iter(self._open.values()))
            if now - sess.last_wall <= limit:
                break
            done.append(self._finish(self._open.popitem(last=False)[1], CLOSED_WALL_IDLE))
        if self._cur is not None and now - self._cur.last_wall > limit:
            done.append(self._finish(self._cur, CLOSED_WALL_IDLE))
            self._window_count = 0
        return done

    def flush(self) -> list[FinishedSession]:
        """Emit every open session (end of input)."""
        done: list[FinishedSession] = []
        while self._open:
            done.append(self._finish(self._open.popitem(last=False)[1], CLOSED_FLUSH))
        if self._cur is not None:
            done.append(self._finish(self._cur, CLOSED_FLUSH))
        self._window_count = 0
        return done

    # -- internals -----------------------------------------------------------------------------
    def _keys(self, line: str) -> list[str]:
        found: list[str] = []
        for m in self._key_re.finditer(line):  # type: ignore[union-attr]
            key = m.group(1) if m.groups() else m.group(0)
            if key and key not in found:
                found.append(key)
        return found

    def _new(self, key: str) -> _Open:
        return _Open(key, self._parts.get(key, 0), self._line_no)

    def _add_keyed(self, key: str, eid: int, ts: float | None, done: list[FinishedSession],
                   text: str | None = None) -> None:
        sess = self._open.get(key)
        if sess is None:
            if len(self._open) >= self.limits.max_open_sessions:
                done.append(self._finish(self._open.popitem(last=False)[1], CLOSED_EVICTED))
            sess = self._open[key] = self._new(key)
            if len(self._open) > self.stats.max_open:
                self.stats.max_open = len(self._open)
        else:
            self._open.move_to_end(key)
        sess.add(eid, ts, self._line_no)
        if text is not None:
            sess.note(eid, self._line_no, text)
        if self._wall:
            sess.last_wall = self.clock()
        if len(sess.event_ids) >= self._max_events:
            del self._open[key]
            self._parts[key] = sess.part + 1
            done.append(self._finish(sess, CLOSED_SIZE))

    def _close_idle_log(self, done: list[FinishedSession]) -> None:
        limit = self.limits.idle_seconds
        now = self._log_now
        if limit is None or now is None:
            return
        # Sessions are ordered by last update; with (mostly) ordered log times the front is the stalest.
        while self._open:
            sess = next(iter(self._open.values()))
            if sess.end is None or now - sess.end <= limit:
                break
            done.append(self._finish(self._open.popitem(last=False)[1], CLOSED_IDLE))

    def _finish(self, sess: _Open, reason: str) -> FinishedSession:
        if sess is self._cur:
            self._cur = None
        if reason not in (CLOSED_SIZE, CLOSED_EVICTED):
            # the key's run of parts is over (a window's key never comes again: `TimeWindowKeys`), so what a state
            # or a journal saves of the numbering (`split_parts`) stays as small as what is open
            self._parts.pop(sess.key, None)
        self.stats.sessions += 1
        self.stats.closed_by[reason] += 1
        if len(self._parts) > 4 * self.limits.max_open_sessions:
            # part numbers of long-gone keys: forget them rather than grow without bound
            self._parts = {k: v for k, v in self._parts.items() if k in self._open}
        return FinishedSession(
            sess.key, sess.event_ids, sess.start, sess.end, reason, sess.part, sess.first_line, sess.last_line,
            sess.examples,
        )


# -- line sources ------------------------------------------------------------------------------


def read_stream(
    fh: BinaryIO,
    stats: ReadStats | None = None,
    *,
    stop: threading.Event | None = None,
    heartbeat: float | None = 0.5,
    max_line_bytes: int = MAX_LINE_BYTES,
    unpack: Callable[[BinaryIO], BinaryIO] | None = None,
) -> Iterator[str | None]:
    """Lines of a binary stream (a pipe, stdin); `None` every `heartbeat` seconds while it is quiet.

    A reader thread does the blocking reads, so the consumer keeps running timeouts while a pipe is
    silent. With `heartbeat=None` the stream is read inline (no thread, no heartbeats). `unpack` (gzip, a
    byte-order mark: `fusionlog.data.readers.unpacked`) looks at the stream's first bytes in the reader, so a
    quiet pipe does not hold up the heartbeats until its first line.
    """
    stats = stats if stats is not None else ReadStats()
    if heartbeat is None:
        for chunk in _chunks(unpack(fh) if unpack else fh, max_line_bytes, stats):
            for raw in chunk:
                yield decode_line(raw, stats)
            if stop is not None and stop.is_set():
                return
        return
    q: queue.Queue = queue.Queue(maxsize=64)  # chunks of lines: bounded memory, little locking
    end = object()

    def reader() -> None:
        try:
            for chunk in _chunks(unpack(fh) if unpack else fh, max_line_bytes, stats):
                while True:
                    try:
                        q.put(chunk, timeout=0.2)
                        break
                    except queue.Full:
                        if stop is not None and stop.is_set():
                            return
                if stop is not None and stop.is_set():
                    return
        except (OSError, ValueError) as exc:  # closed pipe: end of input, not a crash
            logger.warning("input stream ended with an error: %s", exc)
        finally:
            q.put(end)

    threading.Thread(target=reader, name="fusionlog-stdin", daemon=True).start()
    while stop is None or not stop.is_set():
        try:
            item = q.get(timeout=heartbeat)
        except queue.Empty:
            yield None
            continue
        if item is end:
            return
        for raw in item:
            yield decode_line(raw, stats)


def _chunks(fh: BinaryIO, max_line_bytes: int, stats: ReadStats) -> Iterator[list[bytes]]:
    """Complete lines of a binary stream, in chunks of whatever is available (read1 never waits for more).

    An over-long line keeps its first `max_line_bytes` (counted in `truncated`); the rest is skipped.
    """
    read1 = getattr(fh, "read1", None) or fh.read
    pending = b""
    skipping = False  # inside the dropped tail of an over-long line
    while True:
        data = read1(1 << 16)
        if not data:
            break
        if skipping:
            nl = data.find(b"\n")
            if nl < 0:
                continue
            data, skipping = data[nl + 1 :], False
        pending += data
        parts = pending.split(b"\n")
        pending = parts.pop()
        out: list[bytes] = []
        for part in parts:
            if len(part) > max_line_bytes:
                stats.truncated += 1
                part = part[:max_line_bytes]
            out.append(part)
        if len(pending) > max_line_bytes:
            stats.truncated += 1
            out.append(pending[:max_line_bytes])
            pending, skipping = b"", True
        if out:
            yield out
    if pending:
        yield [pending]


def follow(
    path: Path | str,
    stats: ReadStats | None = None,
    *,
    stop: threading.Event | None = None,
    poll_interval: float = 0.25,
    from_end: bool = False,
    max_line_bytes: int = MAX_LINE_BYTES,
    position: FilePosition | None = None,
    resume: ResumeAt | None = None,
) -> Iterator[str | None]:
    """Lines of a growing file, like `tail -F`; yields `None` after each empty poll. Runs until `stop`.

    `stats` counts decode errors and truncations (lines are counted by whoever consumes them).

    * partial last lines wait for their newline (the writer may be mid-line);
    * truncation (size below the read position) restarts at the top, counted in `truncated`; so does a file
      rewritten in place, told by its first bytes (`_FileHead`): logrotate's copytruncate, then lines written past
      the read position before the next poll;
    * rotation (the path now names another file) finishes the old file, then opens the new one;
    * a missing file is waited for.

    `position` (`fusionlog.follow_state`) is kept at the end of the last line yielded; a resumable one leaves an
    unterminated last line for the next run at `stop`, not yielded cut. `resume` starts in the
    file it names (the followed path, or the file a rotation renamed it to) where an earlier run stopped.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    stop = stop or threading.Event()
    fh: BinaryIO | None = None
    ident: tuple[int, int] | None = None
    pending = b""
    first_open = True
    drained = False  # after seeing a rotation: one more read pass over the old file before leaving it
    sniff = False  # a file opened empty: look for a byte-order mark in its first bytes
    file_line = lines = 0  # lines yielded from the open file, and in all
    gone = (0, 0)  # (offset, file_line) where the last file left ended
    head: _FileHead | None = None  # the open file's first bytes, as last looked at
    waited = False  # a quiet poll since the last line read: new lines may come from a rewritten file
    restart = ""  # why the open file is read again from the top (truncated, rewritten)

    def where() -> tuple[int, int, int]:
        """(offset, file_line, lines) after the last line yielded; read while the generator waits at a yield,
        so nothing per line is spent on it."""
        if fh is None:
            return (*gone, lines)
        return fh.tell() - len(pending), file_line, lines

    if position is not None:
        position.track(where)
    try:
        while not stop.is_set():
            if fh is None:
                opening = Path(resume.path) if resume is not None else path
                opened_name = str(opening)
                try:
                    fh = open(opening, "rb")  # noqa: SIM115 - held across polls
                except FileNotFoundError:
                    yield None
                    stop.wait(poll_interval)
                    continue
                except IsADirectoryError as exc:
                    raise DataError(f"{path}: is a directory, expected a log file") from exc
                st = os.fstat(fh.fileno())
                ident = (st.st_dev, st.st_ino)
                fh = _bom_recoded(fh)
                recoded = isinstance(fh, _FollowedRecoded)
                sniff = not recoded and st.st_size < 4  # no mark to see yet
                file_line = 0
                if resume is not None:
                    file_line = _resume_in(fh, resume, recoded, max_line_bytes)
                    resume = None
                elif first_open and from_end:
                    fh.seek(0, os.SEEK_END)
                first_open = False
                pending, drained = b"", False
                head = _FileHead(fh.fileno())
                if position is not None:
                    position.opened(opened_name, ident, fh.fileno(), recoded)
            elif restart:
                logger.info("%s: %s, reading from the top", path, restart)
                stats.truncated += 1
                fh.seek(0)
                pending, file_line, restart = b"", 0, ""
                head = _FileHead(fh.fileno())
                if position is not None:
                    position.opened(opened_name, ident, fh.fileno(), recoded)
            got = False
            while True:
                raw = fh.readline(max_line_bytes + 1)
                if not raw:
                    break
                if waited:
                    waited = False
                    if head.rewritten(fh.fileno()):
                        restart = "rewritten in place (copytruncate)"
                        break
                if sniff:  # the file's first bytes: a byte-order mark decides how all of it is read
                    sniff = False
                    if fh.tell() - len(raw) == 0 and _bom_codec(raw) is not None:
                        fh.seek(0)
                        fh = _bom_recoded(fh)
                        recoded = True
                        if position is not None:
                            position.opened(opened_name, ident, fh.fileno(), recoded)
                        continue
                got = True
                if not raw.endswith(b"\n"):
                    if len(pending) + len(raw) > max_line_bytes:
                        stats.truncated += 1
                        cut = decode_line((pending + raw)[:max_line_bytes], stats)
                        pending = b""
                        _skip_rest_of_line(fh, stats)
                        file_line += 1
                        lines += 1
                        yield cut
                        continue
                    pending += raw  # mid-line: the rest comes later
                    continue
                line, pending = pending + raw, b""
                file_line += 1
                lines += 1
                yield decode_line(line[:max_line_bytes], stats)
                if stop.is_set():
                    return
            if got or restart:
                continue
            # At EOF: rotated, truncated, or just quiet?
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) != ident:
                if not drained:  # the writer may have added lines just before rotating
                    drained = True
                    continue
                if pending:  # the old file's unterminated last line
                    line, pending = pending, b""
                    file_line += 1
                    lines += 1
                    yield decode_line(line, stats)
                gone = (fh.tell(), file_line)
                if position is not None:
                    position.leaving()
                fh.close()
                fh = None
                logger.info("%s: rotated, reopening", path)
                continue
            if st is not None and st.st_size < fh.tell():
                restart = "truncated"
                continue
            if st is not None and head.changed(st) and head.rewritten(fh.fileno()):
                restart = "rewritten in place (copytruncate)"
                continue
            yield None
            stop.wait(poll_interval)
            waited = True
        if pending and (position is None or not position.resumable):  # else left for the next run, whole
            yield decode_line(pending, stats)
    finally:
        if position is not None:
            position.closed()  # what it says stays as it is now
        if fh is not None:
            fh.close()


class _FileHead:
    """The first bytes (up to HEAD_BYTES) of the file `follow` has open, and its size and mtime at the last quiet
    poll.

    Why: logrotate's copytruncate empties the file after copying it, and the writer goes on at its top; when it wrote
    past the follow's read position before the next poll, the size never went below that position and the follow
    read on from the middle of the new lines, losing those before it without counting a truncation (800 lines
    written, 409 read). A file appended to keeps its first bytes; one rewritten has others. They are read again
    (one read of at most HEAD_BYTES) only when lines come after a quiet poll, or when the size or mtime changed
    at one (a rewrite to the same size): nothing while a file is read in one go or stays quiet. A rewrite whose
    first HEAD_BYTES are the same bytes is not told from an append."""

    def __init__(self, fd: int) -> None:
        self.head = os.pread(fd, HEAD_BYTES, 0)
        self.stamp: tuple[int, int] | None = None

    def changed(self, st: os.stat_result) -> bool:
        """The size or mtime differs from the last quiet poll's (the first poll: yes)."""
        stamp = (st.st_size, st.st_mtime_ns)
        before, self.stamp = self.stamp, stamp
        return stamp != before

    def rewritten(self, fd: int) -> bool:
        """The file's first bytes are not those seen before (a young file's may have grown)."""
        now = os.pread(fd, HEAD_BYTES, 0)
        other, self.head = not now.startswith(self.head), now
        return other


#: byte-order mark -> the codec a followed file is read with (explicit byte order: a read may start mid-file)
_FOLLOW_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def _bom_codec(head: bytes) -> str | None:
    return next((codec for bom, codec in _FOLLOW_BOMS if head.startswith(bom)), None)


def _bom_recoded(fh):
    """`fh` itself, or for a file that starts with a byte-order mark (PowerShell 5's `>` writes UTF-16) a reader
    of its lines as UTF-8 bytes, so `follow` reads it as `file_lines` does."""
    at = fh.tell()
    fh.seek(0)
    head = fh.read(4)
    fh.seek(at)
    codec = _bom_codec(head)
    return fh if codec is None else _FollowedRecoded(fh, codec)


class _FollowedRecoded:
    """A growing file in a marked encoding, read as UTF-8 lines (`fusionlog.data.readers._Recoded` for a file
    that grows): `readline` returns what is there, never waits, and a partial line is completed by `follow`."""

    def __init__(self, fh: BinaryIO, codec: str) -> None:
        self.fh, self.codec = fh, codec
        self._reset(fh.tell() == 0)

    def _reset(self, at_start: bool) -> None:
        self._decode = codecs.getincrementaldecoder(self.codec)(errors="replace")
        self._buf = b""
        self._mark = at_start  # the byte-order mark is still to be dropped

    def readline(self, limit: int) -> bytes:
        while b"\n" not in self._buf and len(self._buf) < limit:
            data = self.fh.read(1 << 16)
            if not data:
                break
            text = self._decode.decode(data)
            if self._mark and text:
                text, self._mark = text.removeprefix("\ufeff"), False
            self._buf += text.encode("utf-8")
        nl = self._buf.find(b"\n")
        cut = nl + 1 if 0 <= nl < limit else min(len(self._buf), limit)
        out, self._buf = self._buf[:cut], self._buf[cut:]
        return out

    def tell(self) -> int:
        return self.fh.tell()

    def fileno(self) -> int:
        return self.fh.fileno()

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        at = self.fh.seek(pos, whence)
        self._reset(at == 0)
        return at

    def close(self) -> None:
        self.fh.close()


def _resume_in(fh, resume: ResumeAt, recoded: bool, max_line_bytes: int) -> int:
    """Put `fh` where an earlier run stopped; returns the lines of the file before that point. A file read
    through a recoder (a byte-order mark) is skipped line by line: its byte offsets are the recoder's input's."""
    if not recoded:
        fh.seek(resume.offset)
        return resume.file_line
    for _ in range(resume.file_line):
        while True:
            raw = fh.readline(max_line_bytes + 1)
            if not raw or raw.endswith(b"\n"):
                break
    return resume.file_line


def _skip_rest_of_line(fh: BinaryIO, stats: ReadStats) -> None:
    while True:
        raw = fh.readline(1 << 16)
        if not raw or raw.endswith(b"\n"):
            return


def file_lines(
    path: Path | str, stats: ReadStats | None = None, max_line_bytes: int = MAX_LINE_BYTES,
    progress: ReadProgress | None = None,
) -> Iterator[str]:
    """Lines of a finished file (plain or .gz), read in 64 KiB blocks; bad bytes replaced and counted.
    `progress` hears how far into the file on disk each block ends."""
    from fusionlog.data.readers import open_binary

    stats = stats if stats is not None else ReadStats()
    with open_binary(Path(path), stats) as fh:
        for chunk in _chunks(fh, max_line_bytes, stats):  # type: ignore[arg-type]
            if progress is not None:
                progress.at(fh.disk_tell())  # type: ignore[attr-defined]
            # Fast path: a clean block decodes in one call; any oddity falls back to line by line.
            try:
                text = b"\n".join(chunk).decode("utf-8")
            except UnicodeDecodeError:
                text = None
            # NULs and terminal escapes (a coloured console log) take the line-by-line path, which replaces or
            # strips them as every other reader does (this path once kept the escapes: a template per colour)
            if text is not None and "\x00" not in text and "\x1b" not in text:
                if "\r" in text:  # CRLF files (BGL_2k is one)
                    yield from (line.rstrip("\r") for line in text.split("\n"))
                else:
                    yield from text.split("\n")
                continue
            for raw in chunk:
                yield decode_line(raw, stats)


#: Files a batch read names one by one at INFO when no progress bar shows; past it, one line says how many.
NAMED_FILES = 20


def files_lines(files: Sequence[Path], stats: ReadStats, logger: logging.Logger | None = None,
                progress: ReadProgress | None = None,
                on_file: Callable[[str], None] | None = None) -> Iterator[str]:
    """The lines of several finished files as one stream, in the order given (`expand_log_source`'s:
    oldest first), so a session that a rotation cut in two is scored whole. Empty files are counted. `on_file` is
    called with each file's path before its first line (`StreamSessionizer.from_file`: a trace never runs from one
    file into the next, as in training's batch reading)."""
    say = logger is not None and len(files) > 1 and (progress is None or not progress.shown)
    if say and len(files) > NAMED_FILES:
        logger.info("reading %d files, %s first", len(files), files[0])  # one line, not one per file
    for path in files:
        if say:
            logger.log(logging.INFO if len(files) <= NAMED_FILES else logging.DEBUG, "reading %s", path)
        lines = file_lines(path, stats, progress=progress)
        try:
            first = next(lines, None)
            if first is not None:
                if on_file is not None:
                    on_file(str(path))
                yield first
                yield from lines  # no per-line work here: this is detect's hot path
            else:
                stats.empty_files += 1
        except OSError as exc:  # a disk error, a file the system will not read: the other files are still read
            stats.unreadable_files += 1
            (logger or logging.getLogger(__name__)).warning(
                "%s: cannot read it (%s); skipped from there, the other files are read", path, exc.strerror or exc)
        if progress is not None:
            progress.file_done(path)


class ReadProgress:
    """A progress bar over the bytes on disk of the files a batch read goes through (a gzip file counts with its
    compressed size), on stderr when that is a terminal. Why: `detect` over a month of logs runs for minutes and
    writes its verdicts to a file; without a bar nothing says how far it is."""

    def __init__(self, files: Sequence[Path], show: bool | None = None, **tqdm_kw) -> None:
        """`show`: None = when stderr is a terminal, True = always (to `tqdm_kw["file"]`), False = never."""
        from tqdm.auto import tqdm

        self.sizes = {Path(f): _size(f) for f in files}
        kw = {"mininterval": 0.5, "leave": False, **tqdm_kw}
        self.bar = tqdm(total=sum(self.sizes.values()), unit="B", unit_scale=True, unit_divisor=1024, desc="read",
                        disable=None if show is None else not show, **kw)
        self._done = 0  # bytes of the files read to their end
        self._logs = None
        if self.shown:  # a warning while the bar runs is printed above it, not into it
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._logs = logging_redirect_tqdm([logging.getLogger()])
            self._logs.__enter__()

    @property
    def shown(self) -> bool:
        return not self.bar.disable

    def at(self, position: int) -> None:
        self.bar.update(max(0, self._done + position - self.bar.n))

    def file_done(self, path: Path) -> None:
        self._done += self.sizes.get(Path(path), 0)
        self.bar.update(max(0, self._done - self.bar.n))

    def close(self) -> None:
        self.bar.close()
        if self._logs is not None:
            self._logs.__exit__(None, None, None)
            self._logs = None


def _size(path: Path | str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# -- the scorer ---------------------------------------------------------------------------------


def load_scorer(model_dir: Path | str):
    """The artifact's `SessionScorer` (`fusionlog.served.ArtifactScorer`)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise DataError(f"{path}: model directory not found (expected a detector artifact folder)")
    from fusionlog.served import load_scorer as _load

    return _load(path)


# -- detection loop ----------------------------------------------------------------------------


def _reading(scorer) -> dict[str, str]:
    # scorers written before line filters existed (or that take no raw lines) have none
    return {"line_filter": getattr(scorer, "line_filter", ""), "strip": getattr(scorer, "strip", "")}


def scorer_parser(scorer) -> HeaderParser:
    """A parser that reads lines as the scorer's artifact was trained on them (format, filter, strip)."""
    return HeaderParser(scorer.log_format, **_reading(scorer))


def scorer_sessionizer(scorer, limits: StreamLimits | None = None, **kw) -> StreamSessionizer:
    """A sessionizer that reads lines as the scorer's artifact was trained on them (rule, format, filter, strip)."""
    return StreamSessionizer(scorer.event_id, scorer.rule, scorer.log_format, limits, **_reading(scorer), **kw)


def attach_examples(verdict: dict, examples: dict[int, tuple[int, str]]) -> None:
    """Each top template and each departure the session has gets its first raw line of that template: what an
    SRE greps for next (a lacked step has no line)."""
    for t in (*verdict.get("top_templates", ()), *verdict.get("departures", ())):
        if t.get("kind") == "lacks":
            continue
        hit = examples.get(t.get("event_id"))
        if hit is not None:
            t["example"] = {"line": hit[0], "text": hit[1]}


def finished_verdicts(scorer, batch: Sequence[FinishedSession]) -> list[dict]:
    """Score finished sessions in one model call: `SessionVerdict.to_dict()` plus how and where each closed."""
    if not batch:
        return []
    verdicts = scorer.verdicts([s.key for s in batch], [s.event_ids for s in batch])
    out = []
    for sess, verdict in zip(batch, verdicts, strict=True):
        d = verdict.to_dict()
        d.update(closed_by=sess.closed_by, part=sess.part, start=sess.start, end=sess.end,
                 first_line=sess.first_line, last_line=sess.last_line)
        if sess.examples:
            attach_examples(d, sess.examples)
        out.append(d)
    return out


def detect_stream(
    scorer,
    lines: Iterable[str | None],
    limits: StreamLimits | None = None,
    *,
    batch_size: int = 256,
    max_delay: float = 1.0,
    sessionizer: StreamSessionizer | None = None,
    checkpoint: FollowState | None = None,
) -> Iterator[dict]:
    """Raw lines (and `None` heartbeats) → one verdict dict per finished session, in closing order.

    Finished sessions are scored in batches of up to `batch_size`; a heartbeat, `max_delay` seconds of
    waiting, or the end of input scores what is pending, so a live log never sits on a verdict.
    Each dict is `SessionVerdict.to_dict()` plus `closed_by`, `part`, `start`, `end`, `first_line`,
    `last_line`.

    With a `checkpoint` (`detect --follow --state`): the lines an earlier run read after its resume mark are
    read again first, its written sessions closing silently; each time everything finished is written the
    checkpoint hears it; and the end of input leaves the open sessions open, for the next run.
    """
    sz = sessionizer or scorer_sessionizer(scorer, limits)
    pending: list[FinishedSession] = []
    since = time.monotonic()
    lines = iter(lines)
    if checkpoint is not None:
        sz.start_at(checkpoint.position.base, checkpoint.carry)
        pending += _replay(sz, lines, checkpoint)

    def score() -> Iterator[dict]:
        nonlocal pending
        batch, pending = pending, []
        if checkpoint is not None and batch:
            checkpoint.recording(sz)
        yield from finished_verdicts(scorer, batch)
        if checkpoint is not None:
            checkpoint.settled(sz)

    def poll() -> list[FinishedSession]:
        closed = sz.poll()
        if closed and checkpoint is not None:
            checkpoint.finished(sz.line_no, closed)
        return closed

    feed = sz.feed
    fed = 0
    for line in lines:
        if line is None:
            pending += poll()
            yield from score()
            since = time.monotonic()
            continue
        done = feed(line)
        fed += 1
        if done and checkpoint is not None:
            checkpoint.finished(sz.line_no, done)
        if fed & 4095 == 0:
            # A busy stream never heartbeats: run the wall-clock timeout now and then, and do not
            # let finished sessions wait longer than max_delay for their batch to fill.
            done = [*done, *poll()]
            if pending and time.monotonic() - since > max_delay:
                pending += done
                yield from score()
                continue
        if done:
            if not pending:
                since = time.monotonic()
            pending += done
            if len(pending) >= batch_size or time.monotonic() - since > max_delay:
                yield from score()
    if checkpoint is None:
        pending += sz.flush()
    if checkpoint is not None and pending:
        checkpoint.recording(sz)
    yield from finished_verdicts(scorer, pending)
    if checkpoint is not None:
        checkpoint.settled(sz, final=True)


def size_closed(done: Sequence[FinishedSession]) -> list[FinishedSession]:
    """The sessions among `done` the size limit closed: what a replay must close where they closed, by key and part
    (`StreamSessionizer.cut`)."""
    return [s for s in done if s.closed_by == CLOSED_SIZE]


def numbered_ends(done: Sequence[FinishedSession]) -> list[FinishedSession]:
    """The continuations (part > 0) among `done` closed otherwise than by size: their key's numbering starts over
    there, so a replay from before that line learns the key's part from them."""
    return [s for s in done if s.part and s.closed_by != CLOSED_SIZE]


def parts_at_start(cuts: Mapping[int, Sequence[tuple[str, int]]],
                   ends: Sequence[tuple[int, str, int]]) -> dict[str, int]:
    """Each key's part number where a replay begins: the part of its first session closed after that point by size
    (`cuts`: stream line -> (key, part)...) or, as a continuation, otherwise (`ends`: (line, key, part)), whichever
    came first. What `StreamSessionizer.expect_parts` needs for the keys those closes saw."""
    seen: dict[str, tuple[int, int]] = {}
    for line, sessions in cuts.items():
        for key, part in sessions:
            if key not in seen or line < seen[key][0]:
                seen[key] = (line, part)
    for line, key, part in ends:
        if key not in seen or line < seen[key][0]:
            seen[key] = (line, part)
    return {key: part for key, (_, part) in seen.items()}


def _replay(sz: StreamSessionizer, lines: Iterator[str | None], checkpoint: FollowState) -> list[FinishedSession]:
    """Read again what an earlier run read after its resume mark, closing what its wall-idle closes and its size
    limit closed where they did; returns the sessions finished after its last written verdicts (the rest were
    written)."""
    through, closes, cuts = checkpoint.replay_through, checkpoint.replay_closes, checkpoint.replay_cuts
    end = max([through, *closes, *cuts], default=0)
    late: list[FinishedSession] = []
    sz.expect_parts({**checkpoint.replay_parts, **parts_at_start(cuts, checkpoint.replay_ends)})
    ends: dict[int, list[str]] = {}
    for at, key, _ in checkpoint.replay_ends:
        ends.setdefault(at, []).append(key)
    recorded = {(at, key) for at, sessions in cuts.items() for key, _ in sessions} | {
        (at, key) for at, keys in ends.items() for key in keys} | {
        (at, key) for at, closed in closes.items() for keys in closed for key in keys}
    if sz.line_no >= end:
        return late
    for line in lines:
        if line is None:  # the file ends before the earlier run's last line (rewritten since): go on live
            break
        done = sz.feed(line)
        at = sz.line_no
        for key, part in cuts.get(at, ()):
            done = [*done, *sz.cut(key, part)]
        for keys in closes.get(at, ()):
            done = [*done, *sz.close_keys(keys)]
        for key in ends.get(at, ()):
            sz.restart_numbering(key)  # a continuation with no line after the mark closed here: nothing to close
        if done and (new := [s for s in done if (at, s.key) not in recorded]):
            checkpoint.finished(at, new)  # not in the saved records (the earlier run died first): keep them
        if done and at > through:
            late += done
        if sz.line_no >= end:
            break
    return late
