"""loghub-style format strings (`<Date> <Time> <Level> <Component>: <Content>`) and timestamp parsing."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from fusionlog.errors import ConfigError

_FIELD = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


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
    literal = "".join(re.split(r"<[A-Za-z_][A-Za-z0-9_]*>", log_format))
    special = sorted(set(re.findall(r"(?<!\\)[\[\]()|]", literal)))
    if not special:
        return ""
    escaped = " ".join(_BACKSLASH + c for c in special)
    return f"; literal text is a regex (as in loghub): escape {' '.join(special)} as {escaped}"


_TIME_FORMATS = (
    ("%Y-%m-%d %H:%M:%S.%f", ("Date", "Time")),
    ("%Y-%m-%d %H:%M:%S", ("Date", "Time")),
    ("%Y-%m-%d %H:%M:%S,%f", ("Date", "Time")),
    ("%y/%m/%d %H:%M:%S.%f", ("Date", "Time")),
    ("%a %b %d %H:%M:%S %Y", ("Time",)),
    ("%y%m%d %H%M%S", ("Date", "Time")),
    ("%y/%m/%d %H:%M:%S", ("Date", "Time")),
    ("%Y-%m-%d-%H.%M.%S.%f", ("Time",)),
    ("%Y%m%d-%H:%M:%S:%f", ("Time",)),
)


def parse_timestamp(fields: dict[str, str]) -> float | None:
    """Best-effort epoch seconds from header fields; None when no known layout fits.

    An explicit epoch `Timestamp` field wins (BGL, Thunderbird). Sessions without times fall back to a
    seeded shuffle split, which every report states.
    """
    ts = fields.get("Timestamp")
    if ts and ts.isdigit():
        return float(ts)
    for fmt, keys in _TIME_FORMATS:
        if not all(k in fields for k in keys):
            continue
        text = " ".join(fields[k] for k in keys)
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
    return None
