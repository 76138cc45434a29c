"""Named log formats: `--log-format syslog` (or `zookeeper`, `hadoop`, ...) instead of a format string.

Why: a loghub format string is the first thing a user must get right, and a wrong one reads no line or
reads lines wrongly (`fusionlog.data.formats.format_hint`). Most logs are in a few common layouts, so a
name stands for its format string and for the Drain masks that layout needs (Proxifier's host:port). The
names are loghub's 16 systems, lower-cased, `syslog` (RFC 3164 as rsyslog writes it), `json` (one JSON
object per line) and `logfmt` (key=value pairs), the last two read by key (`fusionlog.data.formats.
record_fields`); a string with a `<Field>` in it is a format string as before.

`sniff_formats` says which named formats read the first lines of a file, for the error a user gets when
they give none and for `fusionlog data formats FILE`. It suggests and never chooses: layouts read each
other's lines (Spark's format reads every line of HDFS's and Hadoop's logs, syslog's reads Mac's and
OpenSSH's), and a format that reads a line with the wrong fields gives wrong templates and no error, so
the user decides with the shares in front of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fusionlog.config import MaskRule
from fusionlog.data.access import ACCESS_FORMAT
from fusionlog.data.containers import CRI, DOCKER, UNWRAP, split_wrapper
from fusionlog.data.formats import (
    JSON_FORMAT,
    LOGFMT_FORMAT,
    TIME_FIELDS,
    compile_format,
    header_reader,
    is_structured_format,
    parse_timestamp,
)
from fusionlog.errors import ConfigError, DataError
from fusionlog.types import ReadStats

#: loghub's format strings for its 16 systems (the ones loghub's benchmarks use).
LOGHUB_FORMATS: dict[str, str] = {
    "Android": "<Date> <Time>  <Pid>  <Tid> <Level> <Component>: <Content>",
    "Apache": r"\[<Time>\] \[<Level>\] <Content>",
    "BGL": "<Label> <Timestamp> <Date> <Node> <Time> <NodeRepeat> <Type> <Component> <Level> <Content>",
    "HDFS": "<Date> <Time> <Pid> <Level> <Component>: <Content>",
    "HPC": "<LogId> <Node> <Component> <State> <Time> <Flag> <Content>",
    "Hadoop": r"<Date> <Time> <Level> \[<Process>\] <Component>: <Content>",
    "HealthApp": r"<Time>\|<Component>\|<Pid>\|<Content>",
    "Linux": r"<Month> <Date> <Time> <Level> <Component>(\[<PID>\])?: <Content>",
    "Mac": r"<Month>  <Date> <Time> <User> <Component>\[<PID>\]( \(<Address>\))?: <Content>",
    "OpenSSH": r"<Date> <Day> <Time> <Component> sshd\[<Pid>\]: <Content>",
    "OpenStack": r"<Logrecord> <Date> <Time> <Pid> <Level> <Component> \[<ADDR>\] <Content>",
    "Proxifier": r"\[<Time>\] <Program> - <Content>",
    "Spark": "<Date> <Time> <Level> <Component>: <Content>",
    "Thunderbird": (
        r"<Label> <Timestamp> <Date> <User> <Month> <Day> <Time> <Location> <Component>(\[<PID>\])?: <Content>"
    ),
    "Windows": "<Date> <Time>, <Level>                  <Component>    <Content>",
    "Zookeeper": r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>",
}

#: Per-system Drain masks beyond the defaults, as loghub's benchmark settings give them. Proxifier's lines start
#: with the destination "host:port"; Drain's prefix tree keys on leading tokens, so unmasked every host grows
#: its own templates (38 on the 2k sample, loghub's ground truth has 8) and every window looks unusual.
LOGHUB_MASKS: dict[str, tuple[MaskRule, ...]] = {
    "Proxifier": (MaskRule(r"(?<![\w.-])(?:[A-Za-z0-9-]+\.)+[A-Za-z][A-Za-z0-9-]*:\d{1,5}(?!\w)", "HOST"),),
}


@dataclass(frozen=True)
class NamedFormat:
    name: str
    log_format: str
    masks: tuple[MaskRule, ...] = ()
    about: str = ""


def _build() -> dict[str, NamedFormat]:
    out = {
        JSON_FORMAT: NamedFormat(
            JSON_FORMAT, JSON_FORMAT,
            about="one JSON object per line (structured loggers): message, time and level read by key"),
        LOGFMT_FORMAT: NamedFormat(
            LOGFMT_FORMAT, LOGFMT_FORMAT,
            about="key=value pairs per line (Go, Heroku): time=... level=info msg=\"...\", read by key"),
        ACCESS_FORMAT: NamedFormat(
            ACCESS_FORMAT, ACCESS_FORMAT,
            about="nginx / Apache httpd access logs (Common, Combined): the request and its status as the message"),
        DOCKER: NamedFormat(
            DOCKER, f"{DOCKER}:<Content>",
            about="Docker's json-file lines ({\"log\": ..., \"time\": ...}); docker:FORMAT reads the inner line"),
        CRI: NamedFormat(
            CRI, f"{CRI}:<Content>",
            about="Kubernetes nodes' CRI lines ('<time> stdout F <line>'); cri:FORMAT reads the inner line"),
        "nginx-error": NamedFormat(
            "nginx-error", r"<Date> <Time> \[<Level>\] <Pid>#<Tid>: <Content>",
            about="nginx's error log: '2026/11/28 10:00:00 [error] 31#31: *5 connect() failed ...'"),
        "go": NamedFormat(
            "go", r"(?=\d{4}/\d\d/\d\d )<Date> <Time> <Content>",  # literal text is a regex: the slashed date only
            about="Go's log package (LstdFlags): '2026/11/28 10:00:00 message', microseconds optional"),
        "syslog": NamedFormat(
            "syslog", r"<Month> <Date> <Time> <Host> <Component>(\[<PID>\])?: <Content>",
            about="RFC 3164 as rsyslog writes it: 'Jun 14 15:16:01 host sshd[1234]: ...'"),
    }
    for system, fmt in LOGHUB_FORMATS.items():
        out[system.lower()] = NamedFormat(system.lower(), fmt, LOGHUB_MASKS.get(system, ()), f"loghub's {system} logs")
    return out


#: every named format, by its lower-case name
NAMED_FORMATS: dict[str, NamedFormat] = _build()


def named_format(value: str) -> NamedFormat | None:
    """The named format `value` names (any case), or None when it is a format string."""
    return NAMED_FORMATS.get(value.strip().lower())


def resolve_log_format(value: str) -> tuple[str, tuple[MaskRule, ...]]:
    """(format string, masks the format brings) for a `--log-format` value: a name or a format string.

    A bare word that names nothing is an error listing the names, not a format that reads every line as
    one `<Content>`-less mismatch."""
    found = named_format(value)
    if found is not None:
        return found.log_format, found.masks
    wrapped = split_wrapper(value)
    if wrapped is not None:  # docker:zookeeper, cri:json, docker:<Date> <Content>: the inner part resolved
        inner, masks = resolve_log_format(wrapped[1])
        if split_wrapper(inner) is not None:
            raise ConfigError(f"--log-format {value!r}: one container wrapper at most")
        return f"{wrapped[0]}:{inner}", masks
    if "<" not in value:
        raise ConfigError(
            f"--log-format {value!r}: not a named format ({', '.join(sorted(NAMED_FORMATS))}) nor a format string "
            f"with <Field>s such as '<Date> <Time> <Level> <Component>: <Content>'")
    return value, ()


def _reads(fmt: str, lines: list[str]) -> int:
    """How many `lines` the format matches, with a time read where the format has time fields."""
    wrapped = split_wrapper(fmt)
    if wrapped is not None:  # the inner lines, each read with its own time (not the runtime's)
        unwrap = UNWRAP[wrapped[0]]
        return _reads(wrapped[1], [got[0].strip() for got in map(unwrap, lines) if got is not None and not got[2]])
    read = header_reader(fmt)
    timed = not is_structured_format(fmt) and any(n in TIME_FIELDS for n in compile_format(fmt)[1])  # by key: a message
    n = 0
    for line in lines:
        fields = read(line)
        if fields is not None and (not timed or parse_timestamp(fields) is not None):
            n += 1
    return n


def sniff_formats(path: Path, max_lines: int = 200, min_share: float = 0.9) -> list[tuple[str, float]]:
    """[(name, share of the first `max_lines` non-empty lines it reads)] for the named formats that read at
    least `min_share` of them, best first (ties: the more specific format, `_specificity`).

    A line counts as read when it matches and, where the format has time fields, they spell a time: a
    loose layout (six words and the rest) matches nearly any line, a time it cannot fake.
    """
    from fusionlog.data.readers import iter_lines

    lines: list[str] = []
    try:
        for _, line in iter_lines(path, ReadStats(), allow_empty=True):
            if line.strip():
                lines.append(line.strip())
            if len(lines) >= max_lines:
                break
    except (OSError, DataError):
        return []
    if not lines:
        return []
    found = []
    for name, nf in NAMED_FORMATS.items():
        share = _reads(nf.log_format, lines) / len(lines)
        if share >= min_share:
            found.append((name, share, _specificity(nf.log_format)))
            if split_wrapper(name) is not None:  # a container's log: which format reads the lines inside
                found += _inner_formats(name, lines, min_share)
    found.sort(key=lambda x: (-x[1], x[2], x[0]))
    return [(name, share) for name, share, _ in found]


def _inner_formats(wrapper: str, lines: list[str], min_share: float) -> list[tuple[str, float, tuple[int, int]]]:
    """(`wrapper:name`, share, specificity) for the named formats that read the lines a runtime wrapped; ranked
    above the bare wrapper, which reads any line inside."""
    out = []
    for name, nf in NAMED_FORMATS.items():
        if split_wrapper(name) is None:
            share = _reads(f"{wrapper}:{nf.log_format}", lines) / len(lines)
            if share >= min_share:
                spec = _specificity(nf.log_format)
                out.append((f"{wrapper}:{name}", share, (spec[0] - 1, spec[1])))
    return out


def _specificity(log_format: str) -> tuple[int, int]:
    """Sort key, more specific first: letters and digits of literal text (OpenSSH's `sshd[`), then fields."""
    if is_structured_format(log_format):
        return 0, 0
    literal = re.sub(r"<[A-Za-z_][A-Za-z0-9_]*>", "", log_format)
    literal = re.sub(r"\\.|\{\d+(?:,\d*)?\}", "", literal)  # a regex's `\d` or `{4}` is no literal letter
    return -sum(c.isalnum() for c in literal), -len(compile_format(log_format)[1])
