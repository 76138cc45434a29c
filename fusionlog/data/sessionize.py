"""Cut parsed records into sessions: by a key (HDFS block, OpenStack instance), line windows or time windows."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from fusionlog.config import SessionRule
from fusionlog.data.formats import TIME_FIELDS
from fusionlog.errors import DataError
from fusionlog.types import LogRecord, ReadStats, Session


@dataclass
class _Open:
    key: str
    event_ids: list[int] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    start: float | None = None
    end: float | None = None

    def add(self, eid: int, rec: LogRecord) -> None:
        self.event_ids.append(eid)
        self.labels.append(rec.label)
        if rec.timestamp is not None:
            self.start = rec.timestamp if self.start is None else min(self.start, rec.timestamp)
            self.end = rec.timestamp if self.end is None else max(self.end, rec.timestamp)

    def close(self, system: str, key_labels: dict[str, int] | None, default_key_label: int | None) -> Session:
        if key_labels is not None:
            label = key_labels.get(self.key, default_key_label)
        elif self.labels and all(lbl is not None for lbl in self.labels):
            label = int(any(self.labels))  # a window is anomalous if any of its lines is
        else:
            label = None
        return Session(system, self.key, self.event_ids, label, self.start, self.end)


def sessionize(
    system: str,
    items: Iterable[tuple[LogRecord, int]],
    rule: SessionRule,
    stats: ReadStats,
    key_labels: dict[str, int] | None = None,
    default_key_label: int | None = None,
    key_prefix: str = "",
) -> list[Session]:
    """Group (record, event id) pairs into sessions in order of first appearance.

    Key rule: a line naming several keys (two HDFS blocks) belongs to each of them; a line naming
    none is counted in `stats.no_session_key` and dropped from sessions.
    """
    if rule.kind == "key":
        return _by_key(system, items, re.compile(rule.key_pattern), stats, key_labels, default_key_label)
    if rule.kind == "lines":
        return _by_lines(system, items, rule.window, key_labels, default_key_label, key_prefix)
    return _by_time(system, items, rule.seconds, key_labels, default_key_label, key_prefix)


def _by_key(system, items, pattern, stats, key_labels, default_key_label) -> list[Session]:
    open_: dict[str, _Open] = {}
    for rec, eid in items:
        keys = _keys(pattern, rec)
        if not keys:
            stats.no_session_key += 1
            continue
        for key in keys:
            sess = open_.get(key)
            if sess is None:
                sess = open_[key] = _Open(key)
            sess.add(eid, rec)
    return [s.close(system, key_labels, default_key_label) for s in open_.values()]


def _keys(pattern: re.Pattern[str], rec: LogRecord) -> list[str]:
    found: list[str] = []
    for m in pattern.finditer(rec.key_text or rec.raw or rec.text):
        key = m.group(1) if m.groups() else m.group(0)
        if key and key not in found:
            found.append(key)
    return found


def _by_lines(system, items, window, key_labels, default_key_label, key_prefix) -> list[Session]:
    sessions: list[Session] = []
    cur: _Open | None = None
    n = 0
    for rec, eid in items:
        if not rec.key_text:  # windows count records; a trace's exception line rides with its record
            if n % window == 0 and cur is not None:
                sessions.append(cur.close(system, key_labels, default_key_label))
                cur = None
            n += 1
        if cur is None:
            cur = _Open(f"{key_prefix}lines:{rec.line_no}")
        cur.add(eid, rec)
    if cur is not None:
        sessions.append(cur.close(system, key_labels, default_key_label))
    return sessions


class TimeWindowKeys:
    """Keys of time windows: `time:B` for bucket B, and `time:B.n` for a window opened again on a bucket at or
    before the latest one, n counting every such window of the log (1, 2, 3, ... across buckets), so keys stay
    unique when the log's time goes back.

    Why: several files read as one log (two pods of a service, a copy beside the original) each run
    through the same minutes; the second file's windows had the first's keys, and whatever is keyed by
    session (LLM verdicts, reports, a user's tickets) took one for the other. Batch and stream name
    windows with this one rule, so their keys agree. Why one count for the log, not one per bucket (until
    stop 30): a follow of two pods whose lines alternate goes back to nearly every minute, and the counts per
    bucket grew by one a minute for as long as it ran, in memory and in each saved resume mark (a month of
    minute windows: some 40,000 of them, written with the state every second); one number is the same size
    at any age.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.latest: int | None = None
        self.again = 0  # windows opened again on a bucket the time went back to, so far

    def key(self, bucket: int | None) -> str:
        if bucket is None or self.latest is None or bucket > self.latest:
            if bucket is not None:
                self.latest = bucket
            return f"{self.prefix}time:{bucket}"
        self.again += 1
        return f"{self.prefix}time:{bucket}.{self.again}"


def _by_time(system, items, seconds, key_labels, default_key_label, key_prefix) -> list[Session]:
    """Fixed windows aligned to multiples of `seconds`; lines without a time join the current window.

    A log none of whose lines gives a time is an error: it would be one window holding every line, a
    detector that silently scores the whole log as one session.
    """
    sessions: list[Session] = []
    cur: _Open | None = None
    cur_bucket: int | None = None
    keys = TimeWindowKeys(key_prefix)
    timed = 0
    for rec, eid in items:
        timed += rec.timestamp is not None
        bucket = cur_bucket if rec.timestamp is None else int(rec.timestamp // seconds)
        if cur is None or bucket != cur_bucket:
            if cur is not None:
                sessions.append(cur.close(system, key_labels, default_key_label))
            cur_bucket = bucket
            cur = _Open(keys.key(bucket))
        cur.add(eid, rec)
    if cur is not None:
        sessions.append(cur.close(system, key_labels, default_key_label))
    if cur is not None and not timed:
        raise DataError(
            f"time windows ({seconds:g} s) need a time in each line, and no line gave one: the log format "
            f"needs time fields fusionlog reads ({', '.join(TIME_FIELDS)}; e.g. <Month> <Date> <Time> for syslog's "
            f"'Jun 14 15:16:01', <Date> <Time> for '2026-11-27 10:00:00,123'), or use line windows (--window N)"
        )
    return sessions
