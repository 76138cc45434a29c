"""Raw log files of any system: header parsing with a loghub format string, Drain3, sessions.

A `RawSpec` is everything needed to read one system's raw logs; the named loghub systems are just
registered specs, and a user's own system is a spec built from the command line or a small JSON file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from fusionlog.config import MaskRule, ParseConfig, SessionRule, config_from_dict
from fusionlog.data.containers import UNWRAPPED_LINE
from fusionlog.data.formats import TimeReader, format_hint, header_reader
from fusionlog.data.named_formats import resolve_log_format
from fusionlog.data.readers import iter_lines
from fusionlog.data.sessionize import sessionize
from fusionlog.data.traces import TraceTail
from fusionlog.errors import ConfigError, DataError
from fusionlog.parsing import TemplateStore
from fusionlog.types import LogRecord, ReadStats, SessionDataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawFile:
    path: str  # relative to the data dir, or absolute
    label: int | None = None  # a label for every session of this file (Kalaki-style per-file labels)


@dataclass(frozen=True)
class RawSpec:
    """How to read one system's raw lines.

    label_mode: "inline" (first header field `Label`, "-" = normal, as BGL/Thunderbird), "key_file"
    (a file of per-key labels), "file" (the RawFile's own label) or "none".
    """

    system: str
    files: tuple[RawFile, ...]
    log_format: str = "<Content>"
    rule: SessionRule = field(default_factory=SessionRule)
    label_mode: str = "none"
    label_file: str = ""  # CSV `key,label` (Normal/Anomaly or 0/1), or one anomalous key per line
    line_filter: str = ""  # regex a record line must match; others are continuation lines (counted)
    strip: str = ""  # regex removed from the content before parsing (e.g. a session-key prefix)
    description: str = ""
    # the system's own Drain masks, applied before the default ones (JSON: [{"name": "HOST", "pattern": "..."}])
    masks: tuple[MaskRule, ...] = ()

    def __post_init__(self) -> None:
        if self.label_mode not in ("inline", "key_file", "file", "none"):
            raise ConfigError(f"RawSpec.label_mode={self.label_mode!r}: use inline, key_file, file or none")
        if self.label_mode == "key_file" and not self.label_file:
            raise ConfigError("RawSpec.label_mode='key_file' needs label_file")
        if not self.files:
            raise ConfigError("RawSpec.files is empty: give at least one log file")
        header_reader(self.log_format)  # fail early on a bad format string
        object.__setattr__(self, "masks", tuple(_mask_rule(m) for m in self.masks))

    def parse_config(self, parse: ParseConfig | None) -> ParseConfig:
        """`parse` with this system's masks in front (the caller's own extra masks after them)."""
        parse = parse or ParseConfig()
        if not self.masks:
            return parse
        return dataclasses.replace(parse, extra_masks=self.masks + tuple(parse.extra_masks))

    @classmethod
    def from_dict(cls, data: dict) -> RawSpec:
        """Build from plain JSON (a user's system config file); unknown keys are an error."""
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"system config: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        d = dict(data)
        if isinstance(d.get("log_format"), str):  # a named format brings its masks, ahead of the config's own
            d["log_format"], format_masks = resolve_log_format(d["log_format"])
            d["masks"] = format_masks + tuple(d.get("masks", ()))
        d["files"] = tuple(RawFile(**f) if isinstance(f, dict) else RawFile(str(f)) for f in d.get("files", ()))
        rule = d.get("rule", {})
        d["rule"] = config_from_dict(SessionRule, rule) if isinstance(rule, dict) else rule
        return cls(**d)

    @classmethod
    def from_json_file(cls, path: Path) -> RawSpec:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read system config JSON: {exc}") from exc
        return cls.from_dict(data)


def _mask_rule(m) -> MaskRule:
    """A MaskRule from itself or a JSON object; the regex must compile (a clear error, not one deep in Drain3)."""
    try:
        rule = m if isinstance(m, MaskRule) else MaskRule(**m)
        re.compile(rule.pattern)
    except (TypeError, re.error) as exc:
        raise ConfigError(f"mask {m!r}: needs a name and a valid regex pattern ({exc})") from exc
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule.name):
        raise ConfigError(f"mask {m!r}: the name must be a word (it becomes <:NAME:> in templates)")
    return rule


def resolve(path: str, data_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else data_dir / p


def read_records(spec: RawSpec, data_dir: Path, stats: ReadStats) -> Iterator[LogRecord]:
    """Stream LogRecords from every file of the spec; unparsable lines are counted, never raised.

    A line that is not a record but names an exception after one (a stack trace's `java.io.IOException:
    ...`) is a record of its own with the earlier record's time, label and session key
    (`fusionlog.data.traces`).
    """
    read = header_reader(spec.log_format)
    keep = re.compile(spec.line_filter) if spec.line_filter else None
    strip = re.compile(spec.strip) if spec.strip else None
    times = TimeReader()
    for raw_file in spec.files:
        path = resolve(raw_file.path, data_dir)
        n_before = stats.lines
        file_stats = ReadStats()
        # a trace never runs from one file into the next
        lines = _LineReader(spec, read, keep, times, raw_file, file_stats, TraceTail())
        first = ""
        for line_no, line in iter_lines(path, file_stats, allow_empty=len(spec.files) > 1):
            first = first or line.strip()
            # numbered across the files, as `detect` numbers them: line windows' keys stay unique
            rec = lines.record(line, n_before + line_no)
            if rec is None:
                continue
            if strip is not None and not rec.key_text:
                rec.text = strip.sub("", rec.text).strip() or rec.text
            yield rec
        _merge(stats, file_stats)
        matched = file_stats.lines - file_stats.unmatched_format - file_stats.empty - file_stats.continuation
        if matched == 0 and stats.lines > n_before:
            raise DataError(
                f"{path}: no line matches the log format {spec.log_format!r} "
                f"({file_stats.lines} line{'' if file_stats.lines == 1 else 's'} read, the first: {first[:100]!r}); "
                f"check the format string"
                f"{format_hint(spec.log_format)}"
            )


@dataclass
class _LineReader:
    """One file's lines into LogRecords: header fields, time, label, trace lines; every other line counted."""

    spec: RawSpec
    read: Callable[[str], dict[str, str] | None | bool]  # False: a held chunk (`header_reader`)
    keep: re.Pattern[str] | None
    times: TimeReader
    raw_file: RawFile
    stats: ReadStats
    tail: TraceTail[LogRecord]

    def record(self, line: str, line_no: int) -> LogRecord | None:
        stats, tail = self.stats, self.tail
        if not line.strip():
            stats.empty += 1
            return None
        fields = self.read(line.strip()) if self.keep is None or self.keep.search(line) else False
        if not fields:
            trace = tail.exception(line)
            if trace is not None:
                stats.exception_lines += 1
                text, parent = trace
                return LogRecord(parent.system, line_no, parent.timestamp, text, parent.label, parent.fields, line,
                                 key_text=parent.key_text or parent.raw)
            if fields is False or tail.frame(line):
                stats.continuation += 1
            else:
                stats.unmatched_format += 1
            return None
        rec = LogRecord(
            system=self.spec.system,
            line_no=line_no,
            timestamp=self.times(fields),
            text=fields["Content"].strip(),
            label=self._label(fields),
            fields=fields,
            raw=fields.pop(UNWRAPPED_LINE, line),  # a container's line: its key is in the service's words
        )
        tail.record(rec)
        return rec

    def _label(self, fields: dict[str, str]) -> int | None:
        if self.spec.label_mode == "inline":
            return 0 if fields.get("Label", "-") == "-" else 1
        if self.spec.label_mode == "file":
            return self.raw_file.label
        return None


def _merge(total: ReadStats, part: ReadStats) -> None:
    for name in ("lines", "decode_errors", "truncated", "unmatched_format", "empty", "continuation", "exception_lines",
                 "empty_files", "truncated_files"):
        setattr(total, name, getattr(total, name) + getattr(part, name))


def read_key_labels(path: Path) -> tuple[dict[str, int], int | None]:
    """Per-key labels: a CSV with a label column, or a plain list of anomalous keys.

    Returns (labels, default for unlisted keys): a plain list means every other key is normal;
    a CSV leaves unlisted keys unlabelled.
    """
    if not path.exists():
        raise DataError(f"{path}: label file not found (expected key,label CSV or a list of anomalous keys)")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: label file is empty")
    if "," in lines[0]:
        labels: dict[str, int] = {}
        for row in csv.reader(lines[1:] if not _is_label(lines[0].split(",")[1]) else lines):
            if len(row) >= 2:
                labels[row[0].strip()] = _label_value(row[1], path)
        return labels, None
    return {ln.strip(): 1 for ln in lines}, 0


def _is_label(value: str) -> bool:
    return value.strip().lower() in {"0", "1", "normal", "anomaly", "anomalous", "abnormal"}


def _label_value(value: str, path: Path) -> int:
    v = value.strip().lower()
    if v in {"1", "anomaly", "anomalous", "abnormal"}:
        return 1
    if v in {"0", "normal"}:
        return 0
    raise DataError(f"{path}: unknown label {value!r}; expected Normal/Anomaly or 0/1")


def load_raw(
    name: str, spec: RawSpec, data_dir: Path, parse: ParseConfig | None = None, progress: bool = True
) -> SessionDataset:
    """Read → Drain3 (fit) → sessions. The fitted store rides along on the dataset."""
    stats = ReadStats()
    store = TemplateStore(spec.system, spec.parse_config(parse))
    key_labels, default = (None, None)
    if spec.label_mode == "key_file":
        key_labels, default = read_key_labels(resolve(spec.label_file, data_dir))
    records = read_records(spec, data_dir, stats)
    parsed = [0]

    def pairs() -> Iterator[tuple[LogRecord, int]]:
        # a generator, so records stream through parsing into sessions without all being held
        for rec in tqdm(records, desc=f"parse {name}", unit=" lines", disable=None if progress else True,
                        mininterval=0.5):
            parsed[0] += 1
            yield rec, store.fit_line(rec.text)

    paths = [str(resolve(f.path, data_dir)) for f in spec.files]
    files = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
    try:
        sessions = sessionize(spec.system, pairs(), spec.rule, stats, key_labels, default)
    except DataError as exc:  # name the files, not just the system (a reader's error names its file already)
        if str(exc).startswith(tuple(paths)):
            raise
        raise DataError(f"{files}: {exc}") from exc
    if parsed[0] == 0:
        raise DataError(f"{name}: no parsable log lines in {[f.path for f in spec.files]}")
    time_ordered = all(s.start is not None for s in sessions)
    return SessionDataset(
        name=name,
        system=spec.system,
        templates=store.templates,
        sessions=sessions,
        time_ordered=time_ordered,
        stats=stats,
        description=spec.description,
        store=store,
    )
