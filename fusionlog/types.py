"""Plain data passed along every arrow of the pipeline (see ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class LogRecord:
    """One raw line after header parsing. `label` is None when the source carries no label."""

    system: str
    line_no: int
    timestamp: float | None
    text: str  # the content field (what Drain parses)
    label: int | None = None
    fields: dict[str, str] = field(default_factory=dict)  # header fields from the format string
    raw: str = ""  # the line as read (a container runtime's: the service's line inside it), where keys are searched
    key_text: str = ""  # where session keys are read when not `raw`: a trace's exception line keys as its record


@dataclass(slots=True)
class Session:
    """The unit of detection: an ordered list of event ids (indices into the dataset's template list)."""

    system: str
    key: str
    event_ids: list[int]
    label: int | None = None
    start: float | None = None
    end: float | None = None

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "event_ids": self.event_ids,
            "label": self.label,
            "start": self.start,
            "end": self.end,
        }

    @classmethod
    def from_dict(cls, system: str, d: dict) -> Session:
        return cls(system, d["key"], list(d["event_ids"]), d.get("label"), d.get("start"), d.get("end"))


@dataclass
class ReadStats:
    """Counts of what a reader had to repair or skip; every skip is counted, never silent."""

    lines: int = 0
    decode_errors: int = 0
    truncated: int = 0
    unmatched_format: int = 0
    empty: int = 0
    continuation: int = 0
    exception_lines: int = 0  # trace lines naming an exception, kept as events of their record (not skipped)
    no_session_key: int = 0
    unknown_events: int = 0
    empty_files: int = 0  # one file of several with no line (a log just rotated)
    truncated_files: int = 0  # gzip files that end early or are damaged: read up to the damage
    unreadable_files: int = 0  # files the system would not read (a disk error, /proc): skipped from the error on

    @property
    def skipped(self) -> int:
        return self.unmatched_format + self.empty + self.no_session_key

    def to_dict(self) -> dict[str, int]:
        return {
            "lines": self.lines,
            "decode_errors": self.decode_errors,
            "truncated": self.truncated,
            "unmatched_format": self.unmatched_format,
            "empty": self.empty,
            "continuation": self.continuation,
            "exception_lines": self.exception_lines,
            "no_session_key": self.no_session_key,
            "unknown_events": self.unknown_events,
            "empty_files": self.empty_files,
            "truncated_files": self.truncated_files,
            "unreadable_files": self.unreadable_files,
            "skipped": self.skipped,
        }


@dataclass
class SessionDataset:
    """Sessions of one system plus the template table their event ids index.

    `templates[i]` is the text of event id i. Every system has its own table; the shared space comes
    from embedding these texts with one model, never from merging id tables (MetaLog's code does that,
    and it breaks the cross-system meaning of ids).
    """

    name: str
    system: str
    templates: list[str]
    sessions: list[Session]
    time_ordered: bool  # True when sessions carry real start times, so splits can be chronological
    stats: ReadStats = field(default_factory=ReadStats)
    description: str = ""
    split_note: str = ""  # why the split is by time or by seeded shuffle, for reports
    store: Any = None  # the fitted TemplateStore when the dataset came from raw lines

    @property
    def labelled(self) -> bool:
        return bool(self.sessions) and all(s.label is not None for s in self.sessions)

    @property
    def anomalous(self) -> int:
        return sum(1 for s in self.sessions if s.label == 1)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "system": self.system,
            "sessions": len(self.sessions),
            "anomalous_sessions": self.anomalous if self.labelled else None,
            "templates": len(self.templates),
            "events": sum(len(s.event_ids) for s in self.sessions),
            "time_ordered": self.time_ordered,
        }
