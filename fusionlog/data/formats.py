"""loghub-style format strings (`<Date> <Time> <Level> <Component>: <Content>`) and timestamp parsing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from fusionlog.constants import MAX_LINE_BYTES
from fusionlog.data.access import ACCESS_FORMAT, access_fields
from fusionlog.data.containers import UNWRAP, UNWRAPPED_LINE, json_object, split_wrapper
from fusionlog.errors import ConfigError

_FIELD = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")

#: `log_format` of JSON-lines logs: one JSON object per line, read by key instead of a format string.
JSON_FORMAT = "json"
#: `log_format` of logfmt logs: `key=value` pairs per line (`msg="..."` quoted), read by key like JSON.
LOGFMT_FORMAT = "logfmt"


#: the formats read by key (`record_fields`) or a reader of their own rather than by a format string
STRUCTURED_FORMATS = (JSON_FORMAT, LOGFMT_FORMAT, ACCESS_FORMAT)


def is_structured_format(log_format: str) -> bool:
    """True for formats read by a function rather than a format string's regex: by key (JSON, logfmt), by a
    reader of their own (access logs), or unwrapped from a container runtime's line (`docker:...`,
    `cri:...`); their fields are `Content`, `Level` and the time as `Timestamp` (epoch) or `Time`."""
    return log_format in STRUCTURED_FORMATS or split_wrapper(log_format) is not None


def compile_format(log_format: str) -> tuple[re.Pattern[str], list[str]]:
    """Turn a loghub format string into an anchored regex with one named group per field.

    Literal text between fields is taken as a regex fragment (as loghub does, so `\\[<Pid>\\]` works)
    with runs of spaces matching any whitespace. A field that only spaces follow is one token; a field
    closed by other text (`\\[<Time>\\]`) may hold spaces. The last field takes the rest of the line.
    """
    parts = re.split(r"(<[A-Za-z_][A-Za-z0-9_]*>)", log_format)
    names: list[str] = []
    regex = ""
    for i, part in enumerate(parts):
        m = _FIELD.fullmatch(part)
        if m:
            name = m.group(1)
            if name in names:
                raise ConfigError(f"log format {log_format!r}: field <{name}> appears twice")
            names.append(name)
            # A field that only spaces follow is one token: `.*?` there let a line that does not fit try
            # every way of spreading its words over the fields (seconds per line; a wrong format hung).
            token = i + 2 < len(parts) and parts[i + 1] != "" and not parts[i + 1].strip(" ")
            regex += f"(?P<{name}>\\S+)" if token else f"(?P<{name}>.*?)"
        else:
            regex += re.sub(r" +", r"\\s+", part)
    if not names:
        raise ConfigError(f"log format {log_format!r}: no <Field> in it; expected e.g. '<Date> <Time> <Content>'")
    if "Content" not in names:
        raise ConfigError(f"log format {log_format!r}: needs a <Content> field (the part Drain parses)")
    # Let the last field be greedy so it takes the rest of the line.
    last = names[-1]
    regex = regex.replace(f"(?P<{last}>.*?)", f"(?P<{last}>.*)")
    try:
        return re.compile("^" + regex + "$"), names
    except re.error as exc:
        raise ConfigError(f"log format {log_format!r} is not a valid pattern: {exc}") from exc


_BACKSLASH = "\\"


def format_hint(log_format: str) -> str:
    """Why a format string may match no line, for the error that says so ('' when nothing stands out).

    Literal text is a regex fragment (loghub's convention), so an unescaped bracket or parenthesis, as in
    loghub's own formats where `[` must be written `\\[`, silently becomes a character class or a group.
    """
    wrapped = split_wrapper(log_format)
    if wrapped is not None:
        shape = "a JSON object with a 'log' key" if wrapped[0] == "docker" else "'<time> stdout|stderr F|P <line>'"
        return f"; {wrapped[0]} lines ({shape}) are unwrapped, then read with {wrapped[1]!r}{format_hint(wrapped[1])}"
    if log_format == ACCESS_FORMAT:
        return ('; access lines are host ident user [time] "request" status size, as nginx and Apache httpd '
                "write them by default (Common or Combined Log Format)")
    if is_structured_format(log_format):
        return (f"; {log_format} lines need a message key per line ({', '.join(RECORD_KEYS['Content'])}); a JSON "
                f"log reads with 'json', key=value pairs with 'logfmt'")
    literal = "".join(re.split(r"<[A-Za-z_][A-Za-z0-9_]*>", log_format))
    special = sorted(set(re.findall(r"(?<!\\)[\[\]()|]", literal)))
    if not special:
        return ""
    escaped = " ".join(_BACKSLASH + c for c in special)
    return f"; literal text is a regex (as in loghub): escape {' '.join(special)} as {escaped}"


#: The year a year-less header (syslog's `Jun 14 15:16:01`) is read in. A leap year, so `Feb 29` parses;
#: only differences between times are used (time windows, idle timeouts, the time split), so any year serves.
#: A log that runs across New Year goes back eleven months at the turn: a time window closes there, and the
#: time split orders January's sessions before December's.
YEARLESS_YEAR = 2000


#: `TimeLayout.fmt` of ISO 8601 date-times (read with `datetime.fromisoformat`; no offset means UTC)
ISO_8601 = "iso8601"


@dataclass(frozen=True)
class TimeLayout:
    """One way header fields spell a time: a strptime format over the named fields, joined by spaces."""

    fmt: str
    keys: tuple[str, ...]
    yearless: bool = False  # the fields carry no year: read in YEARLESS_YEAR

    def epoch(self, fields: dict[str, str]) -> float:
        """Epoch seconds (UTC); KeyError or ValueError when these fields do not spell a time this way."""
        text = " ".join(fields[k] for k in self.keys)
        if self.fmt == ISO_8601:
            if len(text) < 10 or not text[:4].isdigit():  # fromisoformat also reads bare clock times and weeks
                raise ValueError(f"not an ISO 8601 date-time: {text!r}")
            dt = datetime.fromisoformat(text)
            return (dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)).timestamp()
        if self.yearless:
            dt = datetime.strptime(f"{YEARLESS_YEAR} {text}", f"%Y {self.fmt}")
        else:
            dt = datetime.strptime(text, self.fmt)
        return (dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)).timestamp()  # %z: its offset


#: Tried in order; the year-less ones last, so a field that also fits a full date is read with its year.
TIME_LAYOUTS: tuple[TimeLayout, ...] = (
    TimeLayout("%Y-%m-%d %H:%M:%S.%f", ("Date", "Time")),
    TimeLayout("%Y-%m-%d %H:%M:%S", ("Date", "Time")),
    TimeLayout("%Y-%m-%d %H:%M:%S,%f", ("Date", "Time")),
    TimeLayout("%y/%m/%d %H:%M:%S.%f", ("Date", "Time")),
    TimeLayout("%Y/%m/%d %H:%M:%S", ("Date", "Time")),  # nginx's error log, Go's log package
    TimeLayout("%Y/%m/%d %H:%M:%S.%f", ("Date", "Time")),  # Go's log with Lmicroseconds
    TimeLayout("%a %b %d %H:%M:%S %Y", ("Time",)),
    TimeLayout("%y%m%d %H%M%S", ("Date", "Time")),
    TimeLayout("%y/%m/%d %H:%M:%S", ("Date", "Time")),
    TimeLayout("%Y-%m-%d-%H.%M.%S.%f", ("Time",)),
    TimeLayout("%Y%m%d-%H:%M:%S:%f", ("Time",)),
    TimeLayout(ISO_8601, ("Time",)),  # 2026-11-27T10:00:00.123Z, +01:00 offsets (JSON logs, RFC 5424)
    TimeLayout("%d/%b/%Y:%H:%M:%S %z", ("Time",)),  # access logs: 28/Nov/2026:10:00:00 +0100
    # year-less: syslog (Linux, Mac: `Jun 14 15:16:01`), OpenSSH (`<Date>` is the month), Android, Proxifier
    TimeLayout("%b %d %H:%M:%S", ("Month", "Date", "Time"), yearless=True),
    TimeLayout("%b %d %H:%M:%S", ("Month", "Day", "Time"), yearless=True),
    TimeLayout("%b %d %H:%M:%S", ("Date", "Day", "Time"), yearless=True),
    TimeLayout("%m-%d %H:%M:%S.%f", ("Date", "Time"), yearless=True),
    TimeLayout("%m.%d %H:%M:%S", ("Time",), yearless=True),
)

#: every header field a time is read from
TIME_FIELDS: tuple[str, ...] = ("Timestamp", *dict.fromkeys(k for layout in TIME_LAYOUTS for k in layout.keys))


def layout_of(fields: dict[str, str]) -> TimeLayout | None:
    """The first layout that reads these fields (the one `parse_timestamp` uses), or None."""
    for layout in TIME_LAYOUTS:
        try:
            layout.epoch(fields)
            return layout
        except (KeyError, ValueError):
            continue
    return None


#: digits of an epoch time in seconds, milliseconds, microseconds, nanoseconds (years 1973-2286)
_EPOCH_DIGITS = {9: 1.0, 10: 1.0, 12: 1e-3, 13: 1e-3, 15: 1e-6, 16: 1e-6, 18: 1e-9, 19: 1e-9}


def epoch_seconds(text: str, seconds_only: bool = False) -> float | None:
    """An all-digit epoch time in seconds, told from milliseconds (13 digits) and finer by its length; None
    for other text. Why by length: a millisecond epoch read as seconds makes every time window 1000 times too
    wide, and a short number (`14`, a day of the month in a misread header) is no time at all."""
    if not text.isdigit():
        return None
    scale = _EPOCH_DIGITS.get(len(text))
    if scale is None or (seconds_only and scale != 1.0):
        return None
    return int(text) * scale


def parse_timestamp(fields: dict[str, str]) -> float | None:
    """Best-effort epoch seconds from header fields; None when no known layout fits.

    An epoch `Timestamp` field wins (BGL, Thunderbird; `epoch_seconds`), then an epoch `Time` (HPC). Sessions
    without times fall back to a seeded shuffle split, which every report states.
    """
    epoch = epoch_seconds(fields.get("Timestamp") or "")
    if epoch is None:
        epoch = epoch_seconds(fields.get("Time") or "", seconds_only=True)  # HPC's; HHMMSS has 6 digits
    if epoch is not None:
        return epoch
    layout = layout_of(fields)
    return None if layout is None else layout.epoch(fields)


_UNREAD = object()  # a memo miss (None is a remembered "no time")


class TimeReader:
    """`parse_timestamp` for a stream of lines of one log: the layout that read the last time is tried first.

    Why: `parse_timestamp` tries the layouts in order, and a failing strptime costs what a working one does;
    a log keeps one layout, so reading a 2015 Zookeeper line went from three strptime calls to one (batch
    reading of its times 2.2-2.7x faster). Repeated times are remembered (up to `memo_size`; 0 where the
    caller remembers them itself, as the stream parser does by its raw time values). An epoch `Timestamp`
    (or HPC's epoch `Time`) is read first, as `parse_timestamp` does.
    """

    def __init__(self, memo_size: int = 10_000) -> None:
        self._layout: TimeLayout | None = None
        self._memo: dict[tuple, float | None] = {}
        self._memo_size = memo_size

    def __call__(self, fields: dict[str, str]) -> float | None:
        stamp = fields.get("Timestamp")
        epoch = epoch_seconds(stamp) if stamp else None
        if epoch is not None:
            return epoch
        key = tuple(fields.get(k) for k in TIME_FIELDS) if self._memo_size else None
        if key is not None:
            known = self._memo.get(key, _UNREAD)
            if known is not _UNREAD:
                return known  # type: ignore[return-value]
        ts = None
        if self._layout is not None:
            try:
                ts = self._layout.epoch(fields)
            except (KeyError, ValueError):
                ts = None
        if ts is None:
            ts = parse_timestamp(fields)
            if ts is not None:
                self._layout = layout_of(fields)
        if key is not None:
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            self._memo[key] = ts
        return ts


#: the keys each field of a structured record is read from, first present wins (lower-cased; structured
#: loggers' usual names)
RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "Content": ("message", "msg", "log", "text", "event", "body"),
    "Time": ("@timestamp", "timestamp", "time", "ts", "datetime", "date", "asctime"),
    "Level": ("level", "severity", "levelname", "lvl", "log.level", "loglevel"),
}


#: keys that hold an exception or stack trace beside the message (Python, logstash/Java, ECS, Go loggers)
RECORD_ERROR_KEYS = (
    "exc_info", "exception", "stack_trace", "stacktrace", "error.stack_trace", "error", "error.message", "err",
)
MAX_ERROR_CHARS = 300


def error_headline(value: object) -> str:
    """The line of an exception that names it: a Python traceback's last line (`ValueError: bad`), a Java or
    Go trace's first (`java.io.IOException: Connection reset`), an ECS error object's `type: message`."""
    if isinstance(value, dict):
        lower = {str(k).lower(): v for k, v in value.items()}
        parts = [str(lower[k]) for k in ("type", "message") if isinstance(lower.get(k), (str, int, float))]
        return ": ".join(parts)[:MAX_ERROR_CHARS]
    if not isinstance(value, str):
        return ""
    lines = [line.strip() for line in value.splitlines() if line.strip()]
    if not lines:
        return ""
    return (lines[-1] if lines[0].startswith("Traceback") else lines[0])[:MAX_ERROR_CHARS]


def json_fields(line: str) -> dict[str, str] | None:
    """Header fields of one JSON-lines record, or None when the line is not a JSON object with a message.

    Why keys instead of a format string: structured loggers write their fields in any order and quote and
    escape values, so no loghub format reads them (`record_fields` says which keys are read).
    """
    obj = json_object(line)
    return None if obj is None else record_fields(obj)


#: one logfmt pair: key=value, or key="quoted value" with backslash escapes
_LOGFMT_PAIR = re.compile(r'([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def logfmt_fields(line: str) -> dict[str, str] | None:
    """Header fields of one logfmt record (`time=... level=info msg="request served" req=a1`, as Go and
    Heroku services write), or None when the line holds no pair with a message key."""
    obj: dict[str, object] = {}
    for key, value in _LOGFMT_PAIR.findall(line):
        if value.startswith('"'):
            if "\\" not in value:
                value = value[1:-1]  # nothing escaped: most values, and 3x cheaper than decoding
            else:
                try:
                    value = json.loads(value)  # the same escapes as a JSON string
                except ValueError:
                    value = value[1:-1]
        if key not in obj:  # the first of a repeated key counts
            obj[key] = value
    return record_fields(obj) if obj else None


def record_fields(obj: dict) -> dict[str, str] | None:
    """Header fields of one structured record (JSON object, logfmt pairs), or None without a message.

    `Content` is the message (what Drain parses; the other keys vary per request and would make every line
    its own template); a numeric or all-digit time becomes `Timestamp` (epoch, `epoch_seconds` tells
    milliseconds), a text time `Time` (ISO 8601 and the other layouts). A session key (`--key-regex`) is
    searched in the whole line, so any key can carry it. An exception beside the message (`RECORD_ERROR_KEYS`)
    adds its headline in brackets: the message of a failure is often the one a success logs too, and the
    exception's type is what tells them apart.
    """
    plan = _record_plan(tuple(obj))
    fields: dict[str, str] = {}
    for name, keys in plan.fields:
        value = next((v for v in map(obj.__getitem__, keys) if v is not None), None)
        if value is None or isinstance(value, (dict, list, bool)):
            continue
        if name == "Time" and isinstance(value, (int, float)):
            fields["Timestamp"] = str(int(value))
        elif name == "Time" and isinstance(value, str) and value.isdigit():
            fields["Timestamp"] = value
        else:
            fields[name] = str(value)
    if not fields.get("Content", "").strip():
        return None
    error = next((v for v in map(obj.__getitem__, plan.errors) if v not in (None, "", {}, [])), None)
    headline = error_headline(error) if error is not None else ""
    if headline:  # the exception is the signal; the message is often generic ("request failed")
        fields["Content"] = f"{fields['Content'].strip()} [{headline}]"
    return fields


@dataclass(frozen=True)
class _RecordPlan:
    """Which of a record's own keys `record_fields` reads, in priority order, for one set of keys."""

    fields: tuple[tuple[str, tuple], ...]  # (field name, the record's keys for it)
    errors: tuple  # the record's keys that may hold an exception


#: plans by the records' keys in order: a logger writes the same keys line after line, so matching them
#: case-insensitively against RECORD_KEYS is done once per shape, not per line (JSON lines read ~25% faster)
_PLANS: dict[tuple, _RecordPlan] = {}


def _record_plan(keys: tuple) -> _RecordPlan:
    plan = _PLANS.get(keys)
    if plan is None:
        if len(_PLANS) >= 4096:  # records whose keys vary without end (a key per request id): bounded
            _PLANS.clear()
        own = {str(k).lower(): k for k in keys}  # a later key wins when two differ only in case

        def pick(names: tuple[str, ...]) -> tuple:
            return tuple(own[n] for n in names if n in own)

        plan = _PLANS[keys] = _RecordPlan(
            tuple((name, pick(names)) for name, names in RECORD_KEYS.items()), pick(RECORD_ERROR_KEYS)
        )
    return plan


#: formats read by a function of their own rather than by a format string, and the reader of each
STRUCTURED_READERS: dict[str, Callable[[str], dict[str, str] | None]] = {
    JSON_FORMAT: json_fields,
    LOGFMT_FORMAT: logfmt_fields,
    ACCESS_FORMAT: access_fields,
}


def header_reader(log_format: str) -> Callable[[str], dict[str, str] | None | bool]:
    """A function from a stripped line to its header fields (with `Content`), None when the line does not
    fit, or False for a line held to be joined with the next (a container runtime's chunk of a long line):
    the format string's regex, `json_fields` / `logfmt_fields` / `access_fields`, or an unwrapping reader.
    Raises ConfigError on a bad format."""
    wrapped = split_wrapper(log_format)
    if wrapped is not None:
        return _unwrapping_reader(*wrapped)
    if is_structured_format(log_format):
        return STRUCTURED_READERS[log_format]
    pattern, names = compile_format(log_format)

    def read(line: str) -> dict[str, str] | None:
        m = pattern.match(line)
        return None if m is None else {n: (m.group(n) or "") for n in names}

    return read


def _unwrapping_reader(wrapper: str, inner_format: str) -> Callable[[str], dict[str, str] | None | bool]:
    """Header fields of a container runtime's line (`fusionlog.data.containers`): the inner line's fields
    with its time as an epoch `Timestamp` in nanoseconds, the runtime's time where the inner line has none, and
    the inner line itself (`UNWRAPPED_LINE`)."""
    unwrap = UNWRAP[wrapper]
    inner = header_reader(inner_format)
    inner_timed = is_structured_format(inner_format) or any(n in TIME_FIELDS for n in compile_format(inner_format)[1])
    inner_time, runtime_time_of = TimeReader(), TimeReader()
    held: list[str] = []  # the chunks of a line the runtime split, until its last one

    def read(line: str) -> dict[str, str] | None | bool:
        got = unwrap(line)
        if got is None:
            return None
        text, runtime_time, partial = got
        if partial:
            if sum(map(len, held)) < MAX_LINE_BYTES:
                held.append(text)
            return False  # held: not a record yet (a continuation line)
        if held:
            text = "".join([*held, text])
            held.clear()
        fields = inner(text.strip())
        if fields is None:
            return None
        ts = inner_time(fields) if inner_timed else None
        if ts is None and runtime_time:
            ts = runtime_time_of({"Time": runtime_time})
        out = {k: v for k, v in fields.items() if k not in TIME_FIELDS}
        if ts is not None:
            out["Timestamp"] = str(round(ts * 1e9))  # 18-19 digits: read back as nanoseconds
        out[UNWRAPPED_LINE] = text  # where a session key is searched: the service's words, all of its chunks
        return out

    read.reset = held.clear  # type: ignore[attr-defined]  # the end of one input: a held chunk has no rest to come
    read.holding = lambda: bool(held)  # type: ignore[attr-defined]  # a chunk waits for the rest of its line
    return read
