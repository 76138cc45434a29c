"""Stack traces in text logs: the line that names the exception becomes an event of the record it follows.

Why: a service that fails usually says so in a trace printed under an ordinary record (`ERROR Request
failed` + `java.net.ConnectException: Connection refused` + `\tat ...` frames). The trace lines do not
fit the log format, so they used to be counted and dropped, and with them the one line that says what
went wrong; the record alone often reads like a success's. The exception line is kept as an event of the
record's session, with its key, time and label: Java's first line and each `Caused by:`, a Python
traceback's last line, Go's `panic:`. Frames are indented, so they never match; after a record they count
as continuation lines, not as lines the log format failed to read (which would send a user to mend a
format that is right). JSON and logfmt records bring their exception beside the message instead
(`fusionlog.data.formats.error_headline`).

One reader (`TraceTail`) serves batch reading, the stream sessionizer and the HTTP service, so training,
`detect` and `serve` turn the same lines into the same events.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, TypeVar

#: the most exception lines one record keeps (a Java chain of `Caused by:`s is bounded, a loop's is not)
MAX_EXCEPTION_LINES = 3
#: an exception line is cut to this many characters (messages can hold whole payloads)
MAX_EXCEPTION_CHARS = 300

#: an unindented line naming an exception class: `ValueError: bad`, `java.io.IOException: reset`,
#: `Caused by: org.x.DbException`, `libvirt.libvirtError: ...`, `Exception in thread "main" ...`,
#: `panic: runtime error: ...`
EXCEPTION_LINE = re.compile(
    r"(?:Caused by: |Exception in thread \S+ )?"
    r"(?:[A-Za-z_$][\w$]*\.)*[\w$]*(?:Error|Exception|Fault|Failure)(?::|$)"
    r"|panic: "
)

#: Python's first trace line: unindented, but a trace's, not a record's
TRACEBACK_HEAD = "Traceback (most recent call last)"

P = TypeVar("P")


def exception_line(line: str) -> str | None:
    """The line, stripped and cut, when it names an exception at its start (no indent); else None."""
    if not line or line[0].isspace() or EXCEPTION_LINE.match(line) is None:
        return None
    return line.strip()[:MAX_EXCEPTION_CHARS]


@dataclass(slots=True)
class TraceTail(Generic[P]):
    """Follows one stream of lines: the last record read (`parent`, whatever the reader keeps of it) and
    how many exception lines it has kept, so a line that is not a record can be given to it."""

    parent: P | None = None
    kept: int = 0

    def record(self, parent: P) -> None:
        """A record was read: exception lines from here on belong to it."""
        self.parent = parent
        self.kept = 0

    def exception(self, line: str) -> tuple[str, P] | None:
        """(exception text, its record) for a non-record line that names an exception after a record."""
        if self.parent is None or self.kept >= MAX_EXCEPTION_LINES:
            return None
        text = exception_line(line)
        if text is None:
            return None
        self.kept += 1
        return text, self.parent

    def frame(self, line: str) -> bool:
        """True for a non-record line that belongs to a trace under a record: a frame (indented), Python's
        `Traceback ...` head, or an exception line over the bound (`exception` said None)."""
        return self.parent is not None and (
            line[:1].isspace() or line.startswith(TRACEBACK_HEAD) or exception_line(line) is not None
        )
