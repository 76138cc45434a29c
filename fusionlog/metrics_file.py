"""A running `detect`'s counters as a Prometheus text file (`detect --metrics-file`), rewritten atomically.

Why: `detect --follow` runs as a sidecar beside the service it watches, with no HTTP port to scrape, but
node_exporter's textfile collector (or any agent that reads the format) picks up a file. The names are those
of `serve`'s /metrics, so one alert rule (`rate(fusionlog_anomalies_total[5m]) > 0`) covers both; the time of
the last write lets another rule fire when the detector itself stalls or dies, which a counter that stops
growing cannot tell apart from a quiet service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from fusionlog.errors import ConfigError
from fusionlog.io import atomic_write_text

logger = logging.getLogger("fusionlog.detect")

#: Lines a live `detect` reads between two looks at the clock (heartbeats look too).
CHECK_LINES = 1024
#: Skip reasons, as `serve` labels them.
SKIP_REASONS = ("empty", "continuation", "unmatched_format", "no_session_key")
#: Sessions the recent flagged share is taken over.
RECENT_SESSIONS = 200


class RecentFlags:
    """Whether each of the last RECENT_SESSIONS scored sessions was judged anomalous (thread-safe).

    Why: a release that rewords messages floods a detector with flags; the share of recent sessions flagged,
    beside the share of its own training pool the artifact flagged, lets an alert rule tell that drift from
    the odd anomaly (`fusionlog_recent_flagged_share > 2 * fusionlog_pool_flagged_share`).
    """

    def __init__(self, size: int = RECENT_SESSIONS) -> None:
        self._q: deque[bool] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, anomalous: bool) -> None:
        with self._lock:
            self._q.append(bool(anomalous))

    def counts(self) -> tuple[int, int]:
        """(flagged, sessions) among the recent ones."""
        with self._lock:
            return sum(self._q), len(self._q)

    @property
    def full(self) -> bool:
        return len(self._q) == self._q.maxlen


def flag_gauges(recent: RecentFlags, pool_share: float | None) -> dict[str, tuple[str, float]]:
    """The drift gauges `serve`'s /metrics and `detect --metrics-file` share (none before a first session)."""
    flagged, n = recent.counts()
    out: dict[str, tuple[str, float]] = {}
    if n:
        out["fusionlog_recent_flagged_share"] = (
            f"share of the last {n} scored sessions judged anomalous", flagged / n)
    if pool_share is not None:
        out["fusionlog_pool_flagged_share"] = (
            "share of its own training pool the model flagged (report.json)", float(pool_share))
    return out


def prom_labels(labels: tuple[tuple[str, str], ...]) -> str:
    """`{k="v",...}` with the exposition format's escapes ('' without labels)."""
    if not labels:
        return ""
    esc = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in labels)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(labels, esc, strict=True)) + "}"


def prom_number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class MetricsFile:
    """Counts what a `detect` run read and judged, and rewrites `path` at most every `interval` seconds.

    The file is written at once (so a collector sees the detector before its first session), on a heartbeat
    or every CHECK_LINES lines once `interval` has passed, and at the end with `fusionlog_up 0`.
    """

    def __init__(self, path: Path | str, sessionizer, scorer, *, interval: float = 15.0, read_stats=None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigError(f"--metrics-file {self.path}: the folder {self.path.parent} does not exist")
        if interval <= 0:
            raise ConfigError(f"--metrics-interval={interval}: must be > 0")
        self.sessionizer, self.scorer, self.read_stats = sessionizer, scorer, read_stats
        self.interval, self.clock = interval, clock
        self.started = clock()
        self.sessions = self.anomalies = self.with_new = 0
        self.recent = RecentFlags()
        self._last = float("-inf")
        self.write(first=True)

    def record(self, verdict: dict) -> None:
        """Count one verdict `detect` wrote (or judged: --anomalies-only still counts every session)."""
        self.sessions += 1
        self.anomalies += bool(verdict.get("anomalous"))
        self.recent.add(bool(verdict.get("anomalous")))
        self.with_new += bool(verdict.get("new_templates"))

    def lines(self, lines: Iterable[str | None]) -> Iterator[str | None]:
        """`lines` unchanged, with a look at the clock on each heartbeat and every CHECK_LINES lines."""
        n = 0
        for line in lines:
            if line is None:
                self.maybe_write()
            else:
                n += 1
                if n % CHECK_LINES == 0:
                    self.maybe_write()
            yield line

    def maybe_write(self) -> None:
        if self.clock() - self._last >= self.interval:
            self.write()

    def write(self, up: bool = True, first: bool = False) -> None:
        """Rewrite the file. The first write is checked: a path that can never be written (a folder, a read-only
        place) is an error before any work, where it was a warning at every rewrite of a run that went on blind."""
        try:
            atomic_write_text(self.path, self.render(up))
        except OSError as exc:  # a full disk must not stop detection: the next write tries again
            if first:
                raise ConfigError(f"--metrics-file {self.path}: cannot write it ({exc.strerror or exc})") from None
            logger.warning("--metrics-file %s: cannot write (%s)", self.path, exc)
        self._last = self.clock()

    def render(self, up: bool = True) -> str:
        st = self.sessionizer.stats.read
        counters = [
            ("fusionlog_lines_total", "raw log lines read", [((), st.lines)]),
            ("fusionlog_skipped_lines_total", "lines not used, by reason",
             [((("reason", r),), getattr(st, r)) for r in SKIP_REASONS]),
            ("fusionlog_sessions_scored_total", "sessions scored", [((), self.sessions)]),
            ("fusionlog_anomalies_total", "sessions judged anomalous", [((), self.anomalies)]),
            ("fusionlog_sessions_with_new_templates_total",
             "scored sessions holding a template first seen at detection time", [((), self.with_new)]),
        ]
        if self.read_stats is not None:
            counters.append(("fusionlog_decode_errors_total", "lines with bytes that were not valid text (repaired)",
                             [((), self.read_stats.decode_errors)]))
        detector = getattr(self.scorer, "detector", None)
        gauges = [
            ("fusionlog_up", "1 while detect runs, 0 once it has finished", 1.0 if up else 0.0),
            ("fusionlog_open_sessions", "sessions still collecting lines", float(self.sessionizer.open_sessions)),
            ("fusionlog_threshold", "decision threshold of the loaded model", float(self.scorer.threshold)),
            ("fusionlog_muted_templates", "templates an operator marked normal",
             float(len(getattr(self.scorer, "mutes", ())))),
            ("fusionlog_started_timestamp_seconds", "when this detect started (Unix time)", self.started),
            ("fusionlog_metrics_written_timestamp_seconds", "when this file was written (Unix time): a stale value "
             "means the detector stalled or died", self.clock()),
        ]
        if detector is not None:
            gauges.append(("fusionlog_reference_sessions", "sessions the surprise is measured against",
                           float(detector.stats_.n_sessions)))
        gauges += [(name, help_, v) for name, (help_, v) in
                   flag_gauges(self.recent, getattr(self.scorer, "pool_flagged_share", None)).items()]
        out: list[str] = []
        for name, help_, samples in counters:
            out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            out += [f"{name}{prom_labels(labels)} {prom_number(v)}" for labels, v in samples]
        for name, help_, v in gauges:
            out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {prom_number(v)}"]
        return "\n".join(out) + "\n"
