"""Container runtimes' log lines, unwrapped to the line the service wrote.

Why: a new service most often runs in a container, and its logs are read from the runtime, not the
service: Docker's json-file driver writes `{"log": "<the line>\\n", "stream": "stdout", "time": "..."}`, and
Kubernetes nodes (containerd, CRI-O; `/var/log/containers/*.log`) write `<RFC 3339 time> stdout F <the
line>`. Read as they are, the runtime's wrapper is the header and the service's own header (time, level,
thread) ends up in every template. `--log-format docker:<inner>` / `cri:<inner>` unwraps first and reads
the inner line with `<inner>` (a format string or a named format: `docker:json`, `cri:zookeeper`); a bare
`docker` / `cri` reads the whole inner line as the message. The inner line's own time wins; the runtime's
is used when the inner format gives none, since many services log to stdout without one.

Both runtimes split a line longer than their buffer (16 KiB: a JSON record with a deep stack trace) into
chunks; the chunks are joined again (up to `MAX_LINE_BYTES`) and read as the one line they were, the held
ones counted as continuation lines. A session key (`--key-regex`) is searched in the service's line, joined,
not in the runtime's: inside Docker's JSON a quote reads `\\"`, and a long line's key may sit in its first chunk.
"""

from __future__ import annotations

import json
import re

DOCKER = "docker"
CRI = "cri"
CONTAINER_WRAPPERS = (DOCKER, CRI)
#: The header field that carries the service's (unwrapped, joined) line, where a session key is searched; a space
#: keeps it apart from every format field (`<Name>` is a word)
UNWRAPPED_LINE = "unwrapped line"

#: a CRI log line: time, stream, tag (F full, P partial), the service's line
_CRI_LINE = re.compile(r"(\d{4}-\d\d-\d\dT\S+) (?:stdout|stderr) ([FP]) ?(.*)\Z", re.S)


def split_wrapper(log_format: str) -> tuple[str, str] | None:
    """(wrapper, inner format) for `docker:<inner>` / `cri:<inner>` (a bare `docker` reads `<Content>`), else None."""
    head, _, inner = log_format.partition(":")
    if head.strip().lower() not in CONTAINER_WRAPPERS:
        return None
    return head.strip().lower(), inner.strip() or "<Content>"


def json_object(line: str) -> dict | None:
    """The JSON object a line holds, or None (not JSON, or JSON but no object): Docker's lines and JSON logs."""
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def docker_line(line: str) -> tuple[str, str, bool] | None:
    """(the service's line, the runtime's time, partial) of one Docker json-file record, or None for any other
    line; partial: a chunk of a longer line (Docker splits at 16 KiB; only the last chunk ends in a newline)."""
    obj = json_object(line)
    if obj is None or not isinstance(obj.get("log"), str):
        return None
    when, text = obj.get("time"), obj["log"]
    return text.rstrip("\r\n"), when if isinstance(when, str) else "", not text.endswith("\n")


def cri_line(line: str) -> tuple[str, str, bool] | None:
    """(the service's line, the runtime's time, partial) of one CRI log line, or None for any other line;
    partial: tag `P`, a chunk of a line longer than the runtime's buffer, continued by the next line."""
    m = _CRI_LINE.match(line)
    return None if m is None else (m.group(3), m.group(1), m.group(2) == "P")


#: each wrapper's unwrapping function
UNWRAP = {DOCKER: docker_line, CRI: cri_line}
