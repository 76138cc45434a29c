"""HTTP service over a loaded detector (any `SessionScorer`): FastAPI app + uvicorn entry point.

    POST /v1/detect   {"lines": [raw line, ...]}                      sessionized with the scorer's rule
                      {"lines": [{"msg": ..., "ts": ...}, ...]}       a JSON-lines model: records as objects
                      {"sessions": [{"key": k, "lines": [...]}, ...]}  one session per item, raw lines
                      {"sessions": [{"key": k, "templates": [...]}]}   template texts or event ids
                      → {"verdicts": [SessionVerdict.to_dict(), ...], "stats": {...}}
    POST /v1/mute     {"template": text | event id, "line": false, "reason": ""}   with --allow-mute (and a token):
    POST /v1/unmute   {"template": ...}       as `fusionlog mute` (feedback.json), applied from the next request
    POST /v1/baseline {"lines": [...], "replace": false, "reason": ""}   with --allow-baseline (and a token): as
    POST /v1/baseline/undo                    `fusionlog baseline` (baseline.json), applied from the next request
    GET  /v1/baseline the batches in force and the reference's size
    POST /v1/ingest   a shipper's batch ({"lines": [...]}, an array, JSON lines, text/plain; ?stream=NAME): sessions
                      stay open across requests (`fusionlog.ingest`) → {"verdicts": those it finished, ...}
    POST /v1/ingest/flush[?stream=]   close and score open sessions now (all of them at shutdown)
    POST /v1/reload   load the model folder again (also on SIGHUP)
    GET  /healthz     liveness (never needs the token) + what is loaded (with the token, when there is one)
    GET  /metrics     Prometheus text format (with the served scorer: score-cache hits, misses, entries)
    GET  /docs, /openapi.json   FastAPI's generated docs

Edge rules: the body is read with a byte cap (413 before or while reading; a gzip or deflate body is
capped by what it holds), must be UTF-8 and JSON (ingest also takes text/plain), and is validated
strictly (no coercion: `"lines": "x"` or `[1]` is an error naming the field). Every error is a 4xx JSON
object `{"error": kind, "detail": message}`; an unexpected failure is a 500 of the same shape and the
service keeps serving. Scoring runs under one lock, because the scorer's parser state (template cache,
new templates) and the model are not thread-safe: small bodies on the event loop (a thread hop costs more
than their scoring), big ones in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import signal
import threading
import time
import zlib
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fusionlog import __version__
from fusionlog.data.formats import JSON_FORMAT
from fusionlog.data.readers import strip_ansi
from fusionlog.data.traces import TraceTail
from fusionlog.errors import ConfigError, FusionLogError
from fusionlog.ingest import IngestConfig, IngestStreams, StreamsFull, VerdictSink, record_line, stream_name
from fusionlog.journal import lock_folder
from fusionlog.metrics_file import RecentFlags, flag_gauges, prom_labels, prom_number
from fusionlog.stream import StreamLimits, attach_examples, note_example, scorer_parser, scorer_sessionizer
from fusionlog.watch import DriftWatch

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 4 * 2**20
DEFAULT_MAX_LINES = 20_000
#: Bodies up to this size are scored on the event loop; bigger ones in a worker thread.
INLINE_MAX_BYTES = 16 * 1024
TOKEN_ENV = "FUSIONLOG_TOKEN"
#: nginx's status for a request its client gave up on before it was answered (nobody receives it; /metrics does)
CLIENT_CLOSED = 499

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Longest text a mute request may name (a template or one raw line).
MAX_MUTE_CHARS = 10_000
_KNOWN_PATHS = {"/v1/detect", "/v1/mute", "/v1/unmute", "/v1/baseline", "/v1/baseline/undo", "/v1/ingest",
                "/v1/ingest/flush", "/v1/reload", "/healthz", "/metrics", "/docs", "/redoc", "/openapi.json",
                "/docs/oauth2-redirect"}


# -- request / response schema (validation and OpenAPI docs) -----------------------------------


class SessionIn(BaseModel):
    """One ready session: raw lines (headers parsed with the model's format) or templates."""

    model_config = ConfigDict(extra="forbid", strict=True)

    key: str = Field(description="session id echoed in the verdict")
    lines: list[str | dict[str, Any]] | None = Field(None, description=(
        "raw log lines of this session, in order (a model trained on JSON lines also takes each record as an object)"))
    templates: list[str | int] | None = Field(
        None, description="template texts, or event ids of the model's template table, in order"
    )

    @model_validator(mode="after")
    def _one_of(self) -> SessionIn:
        if (self.lines is None) == (self.templates is None):
            raise ValueError("give exactly one of 'lines' or 'templates'")
        return self


class DetectRequest(BaseModel):
    """Either raw `lines` (cut into sessions by the model's rule) or ready `sessions`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    lines: list[str | dict[str, Any]] | None = Field(None, description=(
        "raw log lines; every session is flushed at the end (a model trained on JSON lines also takes each record "
        "as a JSON object, as log shippers post them)"))
    sessions: list[SessionIn] | None = Field(None, description="ready sessions, one verdict each")
    examples: bool = Field(False, description="give each top template and has/new departure the session's first "
                           "raw line of it")
    _repaired: int = PrivateAttr(0)  # strings whose lone surrogates became U+FFFD (`decode_errors`)

    @model_validator(mode="after")
    def _one_of(self) -> DetectRequest:
        if (self.lines is None) == (self.sessions is None):
            raise ValueError("give exactly one of 'lines' or 'sessions'")
        return self


class ExampleLine(BaseModel):
    line: int = Field(description="1-based place of the line in the request's lines (or the session's own)")
    text: str


class TemplateWeight(BaseModel):
    template: str
    attention: float
    event_id: int | None = Field(None, description="the template's id in the model's table")
    example: ExampleLine | None = Field(None, description="with examples=true: the session's first line of it")


class DepartureOut(BaseModel):
    template: str
    event_id: int = Field(description="the template's id in the model's table (-1: a line no template matched)")
    kind: Literal["has", "new", "lacks"] = Field(
        description="has: a template rare here; new: one the detector never saw; lacks: a step most sessions have")
    cost: float = Field(description="its share of the surprise, in units of one never-seen template")
    example: ExampleLine | None = Field(None, description="with examples=true (has/new): the session's first line")


class VerdictOut(BaseModel):
    key: str
    score: float
    anomalous: bool
    events: int
    top_templates: list[TemplateWeight]
    nearest_source_template: str | None
    reason: str
    new_templates: int
    surprise: float | None = Field(None, description="how far the session departs from the reference sessions, "
                                   "in units of one never-seen template; the default model's score ranks by it")
    departures: list[DepartureOut] = Field([], description="the largest terms of the surprise, largest first")


class MuteIn(BaseModel):
    """`POST /v1/mute` and `/v1/unmute` (with `serve --allow-mute`): what `fusionlog mute` takes."""

    model_config = ConfigDict(extra="forbid", strict=True)  # as every other body: `"line": "yes"` is an error

    template: str = Field(min_length=1, max_length=MAX_MUTE_CHARS, description=(
        "a template's text as a verdict's departures show it, its event_id, or a message it matches"))
    line: bool = Field(False, description="template is a whole raw log line, read with the model's log format")
    reason: str = Field("", max_length=500, description="why it is normal (kept with the mute)")


class MuteOut(BaseModel):
    template: str = Field(description="the template muted (or unmuted)")
    event_id: int | None = Field(description="its id in the model's table; null: one the model never saw")
    changed: bool = Field(description="false: it was muted already")
    muted_templates: list[str] = Field(description="every muted template after the change")


class IngestIn(BaseModel):
    """`POST /v1/ingest`: raw lines for a stream whose sessions stay open across requests. A shipper may also post a
    JSON array (or JSON lines) of strings or records, or plain text with `Content-Type: text/plain`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    lines: list[str | dict[str, Any]] = Field(description=(
        "raw log lines, or a shipper's records (the line read from log/message/msg/line; a JSON-lines model reads "
        "the record)"))
    stream: str | None = Field(None, description="which stream (a pod, a file): its own open sessions; default "
                               "'default'; also ?stream= in the URL")


class IngestOut(BaseModel):
    stream: str
    open_sessions: int = Field(description="sessions of this stream still open after these lines")
    verdicts: list[VerdictOut] = Field(description="sessions these lines finished (others close later: a window "
                                       "full, an idle key, the background timeout; all go to serve's verdicts file)")
    stats: dict[str, Any]


class BaselineIn(BaseModel):
    """`POST /v1/baseline` (with `serve --allow-baseline`): known-good raw lines, read as `fusionlog baseline`
    reads a file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    lines: list[str | dict[str, Any]] = Field(min_length=1, description=(
        "raw log lines the operator vouches for, cut into sessions by the model's rule (a JSON-lines model also "
        "takes records as objects); more than one request's worth: post the rest in later requests without replace"))
    replace: bool = Field(False, description="the service changed: these sessions alone are the reference from now "
                          "on; false adds them to it")
    reason: str = Field("", max_length=500, description="why these logs are normal (kept with the batch)")
    source: str = Field("", max_length=200, description="where the lines came from (kept with the batch)")
    _repaired: int = PrivateAttr(0)  # strings whose lone surrogates became U+FFFD (`decode_errors`)


class BaselineOut(BaseModel):
    sessions: int = Field(description="sessions the lines gave, all counted into the reference")
    lines: int
    skipped: int = Field(description="lines that gave no event (reasons in skip_reasons)")
    skip_reasons: dict[str, int]
    templates: int
    new_templates: int = Field(description="templates not in the trained table (stored with their vectors)")
    replace: bool
    reference_sessions: int = Field(description="sessions the surprise is measured against now")
    reference_sessions_before: int
    compared_sessions: int
    flagged_before: int = Field(description="of these sessions, how many the detector flagged before the batch")
    flagged_after: int = Field(description="and how many it flags now")
    batches: int
    notes: list[str] = Field(description="when the counts suggest replacing instead, or more logs")


class BatchOut(BaseModel):
    at: str
    source: str
    reason: str
    sessions: int
    lines: int
    templates: int
    new_templates: int
    replace: bool


class BaselineListOut(BaseModel):
    batches: list[BatchOut] = Field(description="oldest first")
    reference_sessions: int | None


class BaselineUndoOut(BaseModel):
    removed: BatchOut
    batches: int = Field(description="batches left")
    reference_sessions: int | None


class DetectResponse(BaseModel):
    verdicts: list[VerdictOut]
    stats: dict[str, Any]


class ErrorOut(BaseModel):
    error: str = Field(description="machine-readable kind, e.g. malformed_json, body_too_large")
    detail: str = Field(description="what is wrong, naming the field or limit")


# -- errors and metrics --------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


def _error(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


class Metrics:
    """A tiny thread-safe Prometheus registry: counters with labels and one latency histogram."""

    HELP = {
        "fusionlog_requests_total": ("counter", "HTTP requests by path and status code"),
        "fusionlog_lines_total": ("counter", "raw log lines received"),
        "fusionlog_skipped_lines_total": ("counter", "lines not used, by reason"),
        "fusionlog_sessions_scored_total": ("counter", "sessions scored"),
        "fusionlog_anomalies_total": ("counter", "sessions judged anomalous"),
        "fusionlog_sessions_with_new_templates_total": (
            "counter", "scored sessions holding a template first seen at detection time"
        ),
        "fusionlog_errors_total": ("counter", "failed requests by error kind"),
        "fusionlog_score_cache_hits_total": (
            "counter", "sessions whose score came from the scorer's cache (no network run; 0 without a cache)"
        ),
        "fusionlog_score_cache_misses_total": ("counter", "sessions the scorer's network had to score"),
    }

    _UNLABELLED = ("fusionlog_lines_total", "fusionlog_sessions_scored_total", "fusionlog_anomalies_total",
                   "fusionlog_score_cache_hits_total", "fusionlog_score_cache_misses_total")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {k: {} for k in self.HELP}
        self._hist: dict[str, list[float]] = {}  # path -> per-bucket counts (+Inf last), then sum, count
        self.in_flight = 0
        self.started = time.time()
        self.recent = RecentFlags()  # the last sessions' verdicts: the drift gauges

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            family = self._counters[name]
            family[key] = family.get(key, 0.0) + value

    def observe(self, path: str, seconds: float) -> None:
        with self._lock:
            h = self._hist.setdefault(path, [0.0] * (len(LATENCY_BUCKETS) + 3))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    h[i] += 1
            h[len(LATENCY_BUCKETS)] += 1  # +Inf
            h[-2] += seconds
            h[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        out: list[str] = []
        with self._lock:
            for name, (kind, help_) in self.HELP.items():
                out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
                family = self._counters[name]
                if not family and name in self._UNLABELLED:
                    out.append(f"{name} 0")  # present from the start, so rate() has a first sample
                for labels, v in sorted(family.items()):
                    out.append(f"{name}{prom_labels(labels)} {prom_number(v)}")
            name = "fusionlog_request_duration_seconds"
            out += [f"# HELP {name} request latency by path", f"# TYPE {name} histogram"]
            for path, h in sorted(self._hist.items()):
                for i, bound in enumerate(LATENCY_BUCKETS):
                    out.append(f'{name}_bucket{{le="{bound}",path="{path}"}} {prom_number(h[i])}')
                out.append(f'{name}_bucket{{le="+Inf",path="{path}"}} {prom_number(h[len(LATENCY_BUCKETS)])}')
                out.append(f'{name}_sum{{path="{path}"}} {h[-2]!r}')
                out.append(f'{name}_count{{path="{path}"}} {prom_number(h[-1])}')
            gauges = dict(gauges, fusionlog_in_flight_requests=("requests being handled", float(self.in_flight)))
        for name, (help_, v) in gauges.items():
            out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {prom_number(v)}"]
        return "\n".join(out) + "\n"


class _MetricsMiddleware:
    """Pure ASGI: counts every response by path and status and times it (also 401/404/413/500).

    An exception no route caught is answered here as the 500 JSON object every endpoint promises, logged once and
    counted in `fusionlog_errors_total{kind="internal"}`: left to Starlette it was a plain-text 500 that no error
    counter saw."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        path = path if path in _KNOWN_PATHS else "other"  # bounded label set
        status = {"code": 500}
        t0 = time.perf_counter()

        started = {"response": False}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                started["response"] = True
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if started["response"]:
                raise  # half a response is out: nothing can be answered; the server closes the connection
            logger.exception("request to %s failed", path)
            self.metrics.inc("fusionlog_errors_total", kind="internal")
            await _error(500, "internal", "internal error; see the server log")(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.observe(path, time.perf_counter() - t0)
            self.metrics.inc("fusionlog_requests_total", path=path, status=str(status["code"]))


_BEARER = HTTPBearer(auto_error=False, description="required when the service was started with a token")


# -- the service -----------------------------------------------------------------------------------


@dataclass
class ServiceLimits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_lines: int = DEFAULT_MAX_LINES  # lines + templates over the whole request

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_lines < 1:
            raise ConfigError(f"max_body_bytes={self.max_body_bytes} and max_lines={self.max_lines}: both must be >= 1")


class DetectService:
    """The request logic without HTTP: validated request → verdicts + stats, one request at a time."""

    def __init__(self, scorer, limits: ServiceLimits, stream_limits: StreamLimits | None = None,
                 metrics: Metrics | None = None, ingest: IngestConfig | None = None) -> None:
        self.scorer = scorer
        self.limits = limits
        # One request is a batch: no idle timeouts, room for every key it can hold.
        self.stream_limits = stream_limits or StreamLimits(
            max_open_sessions=limits.max_lines, idle_seconds=None, wall_idle_seconds=None
        )
        self.metrics = metrics or Metrics()
        self.parser = scorer_parser(scorer)
        self.lock = threading.Lock()
        self.ingest_config = ingest or IngestConfig()
        self.sink = VerdictSink(self.ingest_config, record=self._count_verdict)
        self.streams = IngestStreams(scorer, self.ingest_config, self.sink)
        journal = self.ingest_config.journal_dir
        self.journal_lock = lock_folder(Path(journal)) if journal else None  # one serve per journal folder
        self.recovered = self.streams.recover()  # what a crashed serve's journals held (`serve --journal`)
        from fusionlog.feedback import now_utc

        self.loaded_at = now_utc()  # start, or the last `reload`
        # a flood of flags, as after a release: said in the log, as a live detect says it
        self.drift = DriftWatch(getattr(scorer, "pool_flagged_share", None), str(getattr(scorer, "model_dir", "MODEL")),
                                logger, recent=self.metrics.recent, who="serve")

    def reload(self, load) -> dict:
        """Swap in the scorer `load()` returns (the artifact re-read from its folder, after a re-`fuse`).

        Loaded before the lock is taken, so requests are served meanwhile; a load that fails (a half-written or
        broken artifact) raises and the old scorer keeps serving. The ingest streams' open sessions hold the old
        scorer's template ids, so they are closed and scored with it first (`closed_by` flush).
        """
        from fusionlog.feedback import now_utc

        new = load()
        with self.lock:
            flushed = self.streams.flush()
            self.scorer = new
            self.parser = scorer_parser(new)
            self.streams = IngestStreams(new, self.ingest_config, self.sink)
            self.drift.pool_share = getattr(new, "pool_flagged_share", None)
            self.loaded_at = now_utc()
        logger.info("reloaded the model from %s (threshold %.6g); %d open ingest session(s) scored with the old one",
                    getattr(new, "model_dir", "?"), float(new.threshold), len(flushed))
        return {"reloaded": True, "loaded_at": self.loaded_at, "threshold": float(new.threshold),
                "templates": len(getattr(getattr(new, "detector", None), "templates_", None) or ()),
                "flushed_sessions": len(flushed)}

    def _refresh(self) -> None:
        """Apply a changed feedback.json / baseline.json. While ingest streams hold open sessions, their template
        ids must stay (as in a live `detect`); otherwise the scorer is reloaded as at start."""
        refresh = getattr(self.scorer, "refresh_feedback", None)
        if refresh is not None:
            refresh(keep_ids=any(self.streams.open_sessions().values()))

    def handle(self, body: bytes) -> dict:
        """Body bytes → response dict; raises ApiError for anything the client got wrong."""
        result = self.score(self.parse(body))
        assert result is not None
        return result

    def parse(self, body: bytes) -> DetectRequest:
        """Decode and validate a body (no lock needed)."""
        req = self._decode(body)
        n_items = len(req.lines) if req.lines is not None else sum(
            len(s.lines if s.lines is not None else s.templates or []) for s in req.sessions or []
        )
        if n_items > self.limits.max_lines:
            raise ApiError(413, "too_many_lines", f"{n_items} lines/templates in the request; the limit is "
                           f"{self.limits.max_lines} (split the request)")
        if req.lines is not None:
            req.lines = self._as_lines(req.lines, "lines")
        for i, item in enumerate(req.sessions or []):
            if item.lines is not None:
                item.lines = self._as_lines(item.lines, f"sessions[{i}].lines")
        return req

    def _as_lines(self, items: list[str | dict[str, Any]], where: str) -> list[str]:
        """Log records posted as JSON objects, as the JSON lines the model was trained on (one line each)."""
        if all(isinstance(x, str) for x in items):
            return items  # type: ignore[return-value]
        if self.parser.log_format != JSON_FORMAT:
            i = next(i for i, x in enumerate(items) if not isinstance(x, str))
            raise ApiError(422, "invalid_request", f"{where}[{i}]: a JSON object, but this model reads text lines "
                           f"in its log format {self.parser.log_format!r}; send each line as a string")
        return [x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in items]

    def score(self, req: DetectRequest, *, wait: bool = True) -> dict | None:
        """Sessionize and score under the scorer lock; with `wait=False`, None if the lock is busy."""
        t0 = time.perf_counter()
        if not self.lock.acquire(blocking=wait):
            return None
        try:
            self._refresh()  # `fusionlog mute` / `baseline` take effect at the next request, no restart
            if req.lines is not None:
                keys, sessions, stats, examples = self._from_lines(req.lines, req.examples)
            else:
                keys, sessions, stats, examples = self._from_sessions(req.sessions or [], req.examples)
            cache_before = _cache_counts(self.scorer)
            verdicts = self.scorer.verdicts(keys, sessions) if sessions else []
            cache_after = _cache_counts(self.scorer)
        finally:
            self.lock.release()
        out = [v.to_dict() for v in verdicts]
        for verdict, ex in zip(out, examples, strict=True):
            if ex:
                attach_examples(verdict, ex)
        anomalous = sum(1 for v in out if v["anomalous"])
        stats.update(decode_errors=req._repaired, sessions=len(out), anomalous=anomalous,
                     elapsed_ms=round((time.perf_counter() - t0) * 1e3, 3))
        self._count_reading(stats)
        for v in out:
            self._count_verdict(v)
        self._count_cache(cache_before, cache_after)
        return {"verdicts": out, "stats": stats}

    def _count_cache(self, before: tuple[int, int] | None, after: tuple[int, int] | None) -> None:
        if before is not None and after is not None:
            self.metrics.inc("fusionlog_score_cache_hits_total", after[0] - before[0])
            self.metrics.inc("fusionlog_score_cache_misses_total", after[1] - before[1])

    def _count_reading(self, stats: dict) -> None:
        m = self.metrics
        m.inc("fusionlog_lines_total", stats.get("lines", 0))
        for reason in ("empty", "continuation", "unmatched_format", "no_session_key"):
            if stats.get(reason):
                m.inc("fusionlog_skipped_lines_total", stats[reason], reason=reason)

    def _count_verdict(self, v: dict) -> None:
        m = self.metrics
        m.inc("fusionlog_sessions_scored_total")
        m.inc("fusionlog_anomalies_total", float(v["anomalous"]))
        m.recent.add(v["anomalous"])
        self.drift.record(v["anomalous"], counted=True)
        if v.get("new_templates"):
            m.inc("fusionlog_sessions_with_new_templates_total")

    # -- ingest streams (a shipper's batches, sessions kept across requests) ------------------------

    def ingest(self, stream: str, items: list, decode_errors: int = 0) -> dict:
        """Feed posted lines to a stream; the response holds the verdicts of the sessions they finished."""
        t0 = time.perf_counter()
        if len(items) > self.limits.max_lines:
            raise ApiError(413, "too_many_lines", f"{len(items)} lines in the request; the limit is "
                           f"{self.limits.max_lines} (post smaller batches)")
        json_model = self.parser.log_format == JSON_FORMAT
        try:
            lines = [_one_line(record_line(x, json_model, f"lines[{i}]")) for i, x in enumerate(items)]
        except ConfigError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        with self.lock:
            self._refresh()
            cache_before = _cache_counts(self.scorer)
            try:
                verdicts, stats = self.streams.feed(stream, lines)
            except StreamsFull as exc:  # capacity, not the request: a shipper retries a 503 later
                raise ApiError(503, "too_many_streams", str(exc)) from None
            self._count_cache(cache_before, _cache_counts(self.scorer))
            open_now = self.streams.open_sessions().get(stream, 0)
        self._count_reading(stats)
        stats.update(decode_errors=decode_errors, sessions=len(verdicts),
                     anomalous=sum(v["anomalous"] for v in verdicts),
                     elapsed_ms=round((time.perf_counter() - t0) * 1e3, 3))
        return {"stream": stream, "open_sessions": open_now, "verdicts": verdicts, "stats": stats}

    def ingest_flush(self, stream: str | None) -> dict:
        with self.lock:
            verdicts = self.streams.flush(stream)
        return {"stream": stream, "verdicts": verdicts, "stats": {"sessions": len(verdicts),
                                                                 "anomalous": sum(v["anomalous"] for v in verdicts)}}

    def ingest_poll(self, wait: bool = True) -> int:
        """Close the streams' sessions idle past `wall_idle_seconds` (the background task); how many closed."""
        if not self.lock.acquire(blocking=wait):
            return 0
        try:
            return len(self.streams.poll())
        finally:
            self.lock.release()

    def _decode(self, body: bytes) -> DetectRequest:
        return decode_body(body, DetectRequest, "a JSON object with 'lines' or 'sessions'")

    # -- feedback (`--allow-mute`) -----------------------------------------------------------------

    def mute(self, req: MuteIn, undo: bool = False) -> dict:
        """Mute (or unmute) a template in the served artifact's folder, then apply it (`fusionlog.feedback`)."""
        from fusionlog.feedback import add_mute, remove_mute

        if not hasattr(self.scorer, "refresh_feedback"):
            raise ApiError(501, "not_supported", "this scorer has no artifact folder to keep mutes in")
        with self.lock:
            if undo:
                change = remove_mute(self.scorer, req.template, raw_line=req.line)
            else:
                change = add_mute(self.scorer, req.template, self.scorer.embed_text, raw_line=req.line,
                                  reason=req.reason)
            self._refresh()
        found = change.resolved
        return {"template": found.template, "event_id": found.event_id, "changed": change.changed,
                "muted_templates": [m.template for m in change.mutes]}

    # -- known-good logs (`--allow-baseline`) -------------------------------------------------------

    def baseline(self, req: BaselineIn) -> dict:
        """Count known-good lines into the served artifact's reference (`fusionlog.baseline`), then apply it.

        Read with the live scorer under the lock, as a detect request would read them, so "before" is what the
        service flagged and "after" what it flags from the next request on.
        """
        from fusionlog.baseline import learn_baseline
        from fusionlog.feedback import now_utc
        from fusionlog.types import ReadStats

        folder = self._artifact_folder()
        if len(req.lines) > self.limits.max_lines:
            raise ApiError(413, "too_many_lines", f"{len(req.lines)} lines in the request; the limit is "
                           f"{self.limits.max_lines} (post the rest in later requests, without replace)")
        lines = [_one_line(x) for x in self._as_lines(req.lines, "lines")]

        def applied():
            self._refresh()
            return scorer

        with self.lock:
            scorer = self.scorer  # under the lock: a reload swaps it
            self._refresh()  # "before" against the reference in force now
            outcome = learn_baseline(folder, scorer, lines, applied, source=req.source or "POST /v1/baseline",
                                     reason=req.reason, at=now_utc(), replace=req.replace,
                                     read_stats=ReadStats(decode_errors=req._repaired))
        out = outcome.to_dict()
        out["notes"] = outcome.notes(redo='POST /v1/baseline/undo, then post these lines with "replace": true',
                                     grow='post later known-good lines without "replace"')
        return out

    def baseline_undo(self) -> dict:
        from fusionlog.baseline import undo_baseline

        folder = self._artifact_folder()
        with self.lock:
            try:
                gone, left = undo_baseline(folder)
            except ConfigError as exc:
                raise ApiError(409, "no_baseline", str(exc)) from None
            self._refresh()
        return {"removed": _batch_summary(gone), "batches": left,
                "reference_sessions": _reference_sessions(self.scorer)}

    def baseline_list(self) -> dict:
        with self.lock:
            self._refresh()
            batches = [_batch_summary(b) for b in getattr(self.scorer, "baseline", ())]
        return {"batches": batches, "reference_sessions": _reference_sessions(self.scorer)}

    def _artifact_folder(self):
        if not hasattr(self.scorer, "refresh_feedback"):
            raise ApiError(501, "not_supported", "this scorer has no artifact folder to keep a baseline in")
        return self.scorer.model_dir

    def _from_lines(self, lines: list[str], examples: bool = False) -> tuple[list[str], list[list[int]], dict, list]:
        # Verdicts carry no times, so only a time rule needs them parsed; one parser for all requests.
        sz = scorer_sessionizer(self.scorer, self.stream_limits, timestamps=False, parser=self.parser,
                                examples=examples)
        finished = []
        for line in lines:
            finished += sz.feed(_one_line(line))
        finished += sz.flush()
        self.parser.reset()  # shared by every request: a chunk this one left unfinished is not the next one's
        st = sz.stats.to_dict()
        names = ("lines", "events", "empty", "continuation", "exception_lines", "unmatched_format", "no_session_key",
                 "evicted", "split")
        stats = {k: st[k] for k in names}
        return [s.key for s in finished], [s.event_ids for s in finished], stats, [s.examples for s in finished]

    def _from_sessions(self, items: list[SessionIn], examples: bool = False) -> tuple[list[str], list[list[int]],
                                                                                      dict, list]:
        keys: list[str] = []
        sessions: list[list[int]] = []
        shown: list[dict[int, tuple[int, str]] | None] = []
        stats = {"lines": 0, "events": 0, "empty": 0, "continuation": 0, "exception_lines": 0, "unmatched_format": 0,
                 "empty_sessions": 0}
        for i, item in enumerate(items):
            ids: list[int] = []
            first: dict[int, tuple[int, str]] | None = {} if examples and item.lines is not None else None
            if item.lines is not None:
                tail: TraceTail[bool] = TraceTail()  # a trace's exception line is an event of this session too
                for n, line in enumerate(item.lines, 1):
                    stats["lines"] += 1
                    one = _one_line(line)
                    text = one.strip()
                    if not text:
                        stats["empty"] += 1
                        continue
                    reason = "continuation" if self.parser.continuation(one) else ""
                    parsed = None if reason else self.parser.parse(text)
                    if parsed is None:
                        trace = tail.exception(one)
                        if trace is not None:
                            stats["exception_lines"] += 1
                            parsed = (trace[0], None)
                        else:
                            stats[reason or ("continuation" if tail.frame(one) else "unmatched_format")] += 1
                            continue
                    else:
                        tail.record(True)
                    ids.append(self.scorer.event_id(parsed[0]))
                    if first is not None:
                        note_example(first, ids[-1], n, text)
            else:
                for j, t in enumerate(item.templates or []):
                    if isinstance(t, int):
                        ids.append(self._check_id(t, f"sessions[{i}].templates[{j}]"))
                    else:
                        ids.append(self.scorer.event_id(t.strip()))
            if not ids:
                stats["empty_sessions"] += 1  # nothing to score; no verdict for this key
                continue
            stats["events"] += len(ids)
            keys.append(item.key)
            sessions.append(ids)
            shown.append(first)
        return keys, sessions, stats, shown

    def _check_id(self, eid: int, where: str) -> int:
        try:
            if eid < 0:
                raise KeyError(eid)
            self.scorer.template(eid)
        except (KeyError, IndexError):
            raise ApiError(422, "invalid_request", f"{where}: {eid} is not an event id of this model") from None
        return eid


def decode_ingest(body: bytes, content_type: str) -> tuple[str | None, list, int]:
    """(stream named in the body, posted items, lines whose bad bytes were replaced) of an ingest body: our JSON
    object, a JSON array, JSON lines (one value per line, as shippers frame them), or plain text lines."""
    if content_type.split(";")[0].strip().lower() == "text/plain":
        raw = body.split(b"\n")
        if raw and raw[-1] == b"":
            raw.pop()
        items, bad = [], 0
        for line in raw:
            try:
                items.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                items.append(line.decode("utf-8", errors="replace"))
                bad += 1
        return None, items, bad
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "not_utf8", f"request body is not valid UTF-8 (byte {exc.start}: {exc.reason}); send "
                       "plain text with Content-Type: text/plain to have bad bytes replaced and counted") from None
    if not text.strip():
        raise ApiError(400, "malformed_json", "request body is empty; expected lines")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            raise ApiError(400, "malformed_json",
                           f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        obj = _json_lines(text)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"JSON not accepted: {type(exc).__name__}: {exc}") from None
    obj, repaired = _without_surrogates(obj, body)
    if isinstance(obj, list):
        return None, obj, repaired
    if not isinstance(obj, dict):
        raise ApiError(422, "invalid_request", f"expected a JSON object with 'lines', an array or JSON lines, got "
                       f"{type(obj).__name__}")
    if "lines" not in obj:  # one record posted alone (a shipper's batch of one)
        return None, [obj], repaired
    try:
        req = IngestIn.model_validate(obj)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _describe(exc)) from None
    return req.stream, req.lines, repaired


def _json_lines(text: str) -> list:
    """JSON values one after another: one per line (JSON lines) or back to back (Fluent Bit's `json_stream`)."""
    decode = json.JSONDecoder().raw_decode
    out, i, n = [], 0, len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i == n:
            return out
        try:
            value, i = decode(text, i)
        except (ValueError, RecursionError) as exc:
            line = text.count("\n", 0, i) + 1
            raise ApiError(400, "malformed_json", f"JSON lines: line {line} is not JSON ({exc})") from None
        out.append(value)


def decode_body(body: bytes, model: type[BaseModel], expected: str):
    """A request body as `model`, or an ApiError that says what is wrong (encoding, JSON, fields). A model with a
    `_repaired` attribute gets the number of strings whose lone surrogates were replaced (`_json_text`)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "not_utf8", f"request body is not valid UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None
    if not text.strip():
        raise ApiError(400, "malformed_json", "request body is empty; expected a JSON object")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "malformed_json", f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"JSON not accepted: {type(exc).__name__}: {exc}") from None
    obj, repaired = _without_surrogates(obj, body)
    if not isinstance(obj, dict):
        raise ApiError(422, "invalid_request", f"expected {expected}, got {type(obj).__name__}")
    try:
        req = model.model_validate(obj)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _describe(exc)) from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "JSON nested too deeply") from None
    if repaired and hasattr(req, "_repaired"):
        req._repaired = repaired
    return req


#: A UTF-16 surrogate with no partner. JSON's `\ud800` escape gives one and json.loads keeps it (a pair becomes
#: one character), but no UTF-8 writer takes it: the response, the journal, the verdicts file, the embedder.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(obj: Any, body: bytes) -> tuple[Any, int]:
    """Parsed JSON with every lone surrogate (in values and names) replaced by U+FFFD, as bad bytes of a text/plain
    body are, and how many strings had one. UTF-8 cannot carry a surrogate itself, so only a body with a
    `\\ud..` escape can hold one: any other body is returned untouched without a walk (the hot path)."""
    if b"\\ud" not in body and b"\\uD" not in body:
        return obj, 0
    count = [0]
    try:
        return _repair(obj, count), count[0]
    except RecursionError:
        raise ApiError(400, "malformed_json", "JSON nested too deeply") from None


def _repair(value: Any, count: list[int]) -> Any:
    """`_without_surrogates`' walk; `count[0]` grows by one per string repaired."""
    if isinstance(value, str):
        fixed, n = _LONE_SURROGATE.subn("\ufffd", value)
        count[0] += n > 0
        return fixed
    if isinstance(value, list):
        return [_repair(v, count) for v in value]
    if isinstance(value, dict):
        return {_repair(k, count): _repair(v, count) for k, v in value.items()}
    return value


def _cache_counts(scorer) -> tuple[int, int] | None:
    """(hits, misses) of the scorer's score cache (`fusionlog.served.ScoreCache`), None if it has none.

    Read under the scorer lock before and after scoring, so the per-request difference is exact.
    """
    cache = getattr(scorer, "cache", None)
    if cache is None:
        return None
    return int(cache.hits), int(cache.misses)


def _one_line(line: str) -> str:
    # A JSON string may hold newlines; a log line may not: they become spaces. Terminal colours go, as
    # when a file is read (`decode_line`).
    if "\n" in line or "\r" in line:
        line = line.replace("\r", " ").replace("\n", " ")
    return strip_ansi(line) if "\x1b" in line else line


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _openapi_request_body() -> dict:
    return _openapi_body(DetectRequest)


def _openapi_body(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def create_app(
    scorer,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_lines: int = DEFAULT_MAX_LINES,
    stream_limits: StreamLimits | None = None,
    allow_mute: bool = False,
    allow_baseline: bool = False,
    ingest: IngestConfig | None = None,
    poll_seconds: float = 1.0,
) -> FastAPI:
    """The HTTP app over one loaded scorer. `token`: require `Authorization: Bearer <token>` (None = open).

    `allow_mute`: also take `POST /v1/mute` and `/v1/unmute` (an alert's "this is normal" button), which write
    the artifact folder's `feedback.json`; `allow_baseline`: `POST /v1/baseline` and `/v1/baseline/undo` (known-good
    logs after a release), which write its `baseline.json`. Only with a token: both silence alerts.
    `ingest`: the bounds of `POST /v1/ingest`'s streams and where their verdicts go (`fusionlog.ingest`); their
    sessions idle past its wall-clock timeout are closed every `poll_seconds`, and all at shutdown.
    """
    for allowed, name in ((allow_mute, "allow_mute"), (allow_baseline, "allow_baseline")):
        if allowed and not token:
            raise ConfigError(f"{name} needs a token: an open service must not let anyone who reaches it silence "
                              "its alerts (set --token or $" + TOKEN_ENV + ")")
    metrics = Metrics()
    service = DetectService(scorer, ServiceLimits(max_body_bytes, max_lines), stream_limits, metrics, ingest)
    token_bytes = token.encode("utf-8") if token else None

    async def poll_streams() -> None:
        while True:
            await asyncio.sleep(poll_seconds)
            try:
                await run_in_threadpool(service.ingest_poll)
            except Exception:  # the next poll tries again; the service keeps serving
                logger.exception("closing idle ingest sessions failed")

    async def reload_on_signal() -> None:
        try:
            await run_in_threadpool(service.reload, load_again)
        except Exception as exc:  # noqa: BLE001 - the old model keeps serving, and the log says why
            logger.error("SIGHUP: the model was not reloaded, the loaded one keeps serving: %s", exc)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        task = asyncio.create_task(poll_streams()) if service.ingest_config.wall_idle_seconds else None
        hup = _on_sighup(lambda: asyncio.ensure_future(reload_on_signal()))
        try:
            yield
        finally:
            if hup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            flushed = await run_in_threadpool(service.ingest_flush, None)  # nothing open is lost at shutdown
            if flushed["verdicts"]:
                logger.info("shutdown: scored the %d open session(s) of the ingest streams",
                            len(flushed["verdicts"]))
            service.streams.close()
            service.sink.close()
            if service.journal_lock is not None:
                service.journal_lock.close()

    app = FastAPI(
        title="FusionLog detector",
        version=__version__,
        description="Score log sessions with a distilled FusionLog detector (no LLM behind it).",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics

    def authorized(creds: HTTPAuthorizationCredentials | None) -> bool:
        if token_bytes is None:
            return True
        given = creds.credentials.encode("utf-8") if creds is not None else b""
        # compare_digest takes time independent of where the strings differ
        return creds is not None and hmac.compare_digest(given, token_bytes)

    async def auth(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        # async: a sync dependency would cost a worker-thread hop on every request
        if not authorized(creds):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer <token>)")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.inc("fusionlog_errors_total", kind=exc.kind)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.kind, exc.detail, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.inc("fusionlog_errors_total", kind=kind)
        return _error(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))

    error_responses = {
        s: {"model": ErrorOut, "description": d}
        for s, d in {
            400: "malformed JSON or not UTF-8", 401: "missing or wrong token", 413: "body or line count over the limit",
            422: "wrong field or type", 500: "internal error",
        }.items()
    }

    @app.post(
        "/v1/detect",
        response_model=DetectResponse,
        responses=error_responses,
        dependencies=[Depends(auth)],
        openapi_extra=_openapi_request_body(),
        summary="Score raw lines or ready sessions",
    )
    async def detect(request: Request) -> JSONResponse:
        body = await _read_body(request, max_body_bytes)
        try:
            # A small request is handled right here (about a millisecond: cheaper than a thread hop)
            # unless a big one holds the scorer, which must never block the event loop; a big one is
            # parsed and scored in a worker thread, so /healthz and other requests keep flowing.
            if len(body) <= INLINE_MAX_BYTES:
                req = service.parse(body)
                result = service.score(req, wait=False)
                if result is None:
                    result = await run_in_threadpool(service.score, req)
            else:
                result = await run_in_threadpool(service.handle, body)
        except ApiError:
            raise
        except FusionLogError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        except Exception:  # the service must survive whatever one request does
            logger.exception("detect request failed")
            metrics.inc("fusionlog_errors_total", kind="internal")
            return _error(500, "internal", "internal error while scoring; see the server log")
        return JSONResponse(result)

    async def mute_route(request: Request, undo: bool) -> JSONResponse:
        if not allow_mute:
            raise ApiError(403, "mute_disabled", "mutes over HTTP are off; start serve with --allow-mute (and a "
                           "token), or run `fusionlog mute --model DIR TEMPLATE` where the model is")
        req = decode_body(await _read_body(request, 4 * MAX_MUTE_CHARS), MuteIn, "a JSON object with 'template'")
        try:
            result = await run_in_threadpool(service.mute, req, undo)  # may embed a template: not on the loop
        except ApiError:
            raise
        except FusionLogError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        logger.info("%s %r over HTTP", "unmuted" if undo else "muted", result["template"])
        return JSONResponse(result)

    @app.post("/v1/mute", response_model=MuteOut, responses=error_responses, dependencies=[Depends(auth)],
              openapi_extra=_openapi_body(MuteIn), summary="Mark a template as normal (serve --allow-mute)")
    async def mute(request: Request) -> JSONResponse:
        return await mute_route(request, undo=False)

    @app.post("/v1/unmute", response_model=MuteOut, responses=error_responses, dependencies=[Depends(auth)],
              openapi_extra=_openapi_body(MuteIn), summary="Count a muted template again (serve --allow-mute)")
    async def unmute(request: Request) -> JSONResponse:
        return await mute_route(request, undo=True)

    def baseline_allowed() -> None:
        if not allow_baseline:
            raise ApiError(403, "baseline_disabled", "baselines over HTTP are off; start serve with --allow-baseline "
                           "(and a token), or run `fusionlog baseline --model DIR FILE` where the model is")

    async def in_worker(call, *args):
        """Run `call` in a worker thread (it reads and scores many lines), mapping library errors to 4xx."""
        try:
            return await run_in_threadpool(call, *args)
        except ApiError:
            raise
        except FusionLogError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None

    @app.post("/v1/baseline", response_model=BaselineOut, responses=error_responses, dependencies=[Depends(auth)],
              openapi_extra=_openapi_body(BaselineIn),
              summary="Count known-good lines into the reference (serve --allow-baseline)")
    async def baseline(request: Request) -> JSONResponse:
        baseline_allowed()
        req = decode_body(await _read_body(request, max_body_bytes), BaselineIn, "a JSON object with 'lines'")
        result = await in_worker(service.baseline, req)
        logger.info("baseline over HTTP: %d sessions %s (reference %d -> %d sessions)", result["sessions"],
                    "replaced the reference" if result["replace"] else "added", result["reference_sessions_before"],
                    result["reference_sessions"])
        return JSONResponse(result)

    @app.post("/v1/baseline/undo", response_model=BaselineUndoOut, responses=error_responses,
              dependencies=[Depends(auth)], summary="Remove the last baseline batch (serve --allow-baseline)")
    async def baseline_undo() -> JSONResponse:
        baseline_allowed()
        result = await in_worker(service.baseline_undo)
        logger.info("baseline batch of %s removed over HTTP", result["removed"]["at"])
        return JSONResponse(result)

    @app.get("/v1/baseline", response_model=BaselineListOut, responses=error_responses, dependencies=[Depends(auth)],
             summary="The baseline batches in force")
    async def baseline_list() -> JSONResponse:
        return JSONResponse(await in_worker(service.baseline_list))

    @app.post("/v1/ingest", response_model=IngestOut, responses=error_responses, dependencies=[Depends(auth)],
              openapi_extra=_openapi_body(IngestIn),
              summary="Add a shipper's lines to a stream whose sessions stay open across requests")
    async def ingest(request: Request, stream: str | None = None) -> JSONResponse:
        body = await _read_body(request, max_body_bytes)
        named, items, bad = decode_ingest(body, request.headers.get("content-type", ""))
        if named and stream and named != stream:
            raise ApiError(422, "invalid_request", f"stream {named!r} in the body, {stream!r} in the URL: give one")
        return JSONResponse(await in_worker(service.ingest, _stream_param(named or stream), items, bad))

    @app.post("/v1/ingest/flush", responses=error_responses, dependencies=[Depends(auth)],
              summary="Close and score every open session of a stream (?stream=), or of all")
    async def ingest_flush(stream: str | None = None) -> JSONResponse:
        # `?stream=` names the default stream, as on /v1/ingest; no parameter at all flushes every stream
        return JSONResponse(await in_worker(service.ingest_flush, None if stream is None else _stream_param(stream)))

    def load_again():
        """The folder's scorer, loaded anew. Any failure of the load is the folder's (a file cut mid-copy fails in
        safetensors, a hand-edited JSON file in whatever reads it), so it is a 422 naming it, never a 500, and the
        loaded model keeps serving."""
        folder = getattr(service.scorer, "model_dir", None)
        if folder is None:
            raise ApiError(501, "not_supported", "this scorer has no artifact folder to reload from")
        from fusionlog.stream import load_scorer

        try:
            return load_scorer(folder)
        except FusionLogError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a broken file raises; the old model serves on
            raise ApiError(422, "invalid_request", f"{folder}: the model folder does not load "
                           f"({type(exc).__name__}: {exc}); the loaded model keeps serving") from exc

    @app.post("/v1/reload", responses=error_responses, dependencies=[Depends(auth)],
              summary="Load the model folder again (after a re-fuse), as SIGHUP does")
    async def reload() -> JSONResponse:
        return JSONResponse(await in_worker(service.reload, load_again))

    @app.get("/healthz", summary="Liveness and what is loaded")
    async def healthz(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> dict:
        if not authorized(creds):
            # a probe needs the 200 only; what is loaded (muted templates are log text, the verdicts file a path
            # on the server) is for whoever holds the token, as /metrics is
            return {"status": "ok", "version": __version__, "auth": True,
                    "detail": "send the bearer token for what is loaded"}
        scorer = service.scorer  # the one loaded now (`POST /v1/reload`, SIGHUP)
        rule = scorer.rule
        return {
            "status": "ok",
            "version": __version__,
            "threshold": float(scorer.threshold),
            "rule": {
                "kind": rule.kind, "key_pattern": rule.key_pattern, "window": rule.window, "seconds": rule.seconds
            },
            "log_format": scorer.log_format,
            "line_filter": getattr(scorer, "line_filter", ""),
            "strip": getattr(scorer, "strip", ""),
            "muted_templates": [m.template for m in getattr(scorer, "mutes", ())],  # `fusionlog mute`
            "baseline_batches": len(getattr(scorer, "baseline", ())),  # `fusionlog baseline`
            "reference_sessions": _reference_sessions(scorer),  # what "rare" is measured against
            "allow_mute": allow_mute,  # POST /v1/mute, /v1/unmute
            "allow_baseline": allow_baseline,  # POST /v1/baseline, /v1/baseline/undo
            "ingest": _ingest_health(service),  # POST /v1/ingest: streams, open sessions, verdicts file
            "auth": token_bytes is not None,
            "limits": {"max_body_bytes": max_body_bytes, "max_lines": max_lines},
            "uptime_s": round(time.time() - metrics.started, 3),
            "loaded_at": service.loaded_at,  # UTC, ISO 8601: start or the last reload
        }

    @app.get("/metrics", dependencies=[Depends(auth)], response_class=PlainTextResponse,
             summary="Prometheus metrics")
    async def metrics_endpoint() -> PlainTextResponse:
        scorer = service.scorer
        gauges = {
            "fusionlog_up": ("1 while the service runs", 1.0),
            "fusionlog_threshold": ("decision threshold of the loaded model", float(scorer.threshold)),
            "fusionlog_uptime_seconds": ("seconds since start", time.time() - metrics.started),
        }
        if hasattr(scorer, "mutes"):  # `fusionlog mute` / POST /v1/mute: how many templates are not counted
            gauges["fusionlog_muted_templates"] = ("templates an operator marked normal", float(len(scorer.mutes)))
        gauges.update(flag_gauges(metrics.recent, getattr(scorer, "pool_flagged_share", None)))
        open_now = service.streams.open_sessions()
        gauges["fusionlog_ingest_streams"] = ("ingest streams open (POST /v1/ingest)", float(len(open_now)))
        gauges["fusionlog_open_sessions"] = ("sessions open in the ingest streams", float(sum(open_now.values())))
        if (n_ref := _reference_sessions(scorer)) is not None:  # grows (or is replaced) by `fusionlog baseline`
            gauges["fusionlog_reference_sessions"] = ("sessions the surprise is measured against", float(n_ref))
        cache = getattr(scorer, "cache", None)
        if cache is not None:
            gauges["fusionlog_score_cache_entries"] = ("distinct model inputs in the score cache", float(len(cache)))
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    _add_schemas(app)
    return app


def _on_sighup(callback) -> bool:
    """Reload on SIGHUP, as daemons do; only where the loop may take signals (the main thread, not Windows)."""
    sighup = getattr(signal, "SIGHUP", None)
    if sighup is None or threading.current_thread() is not threading.main_thread():
        return False
    try:
        asyncio.get_running_loop().add_signal_handler(sighup, callback)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


def _stream_param(name: str | None) -> str:
    """A posted stream name as the streams know it (empty or none: the default stream), or a 422 saying why not."""
    try:
        return stream_name(name)
    except ConfigError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


def _ingest_health(service: DetectService) -> dict:
    open_now = service.streams.open_sessions()
    return {"streams": len(open_now), "open_sessions": sum(open_now.values()),
            "verdicts_file": service.ingest_config.verdicts_path,
            "wall_idle_seconds": service.ingest_config.wall_idle_seconds,
            "journal": service.ingest_config.journal_dir}


def _batch_summary(batch) -> dict:
    return {"at": batch.at, "source": batch.source, "reason": batch.reason, "sessions": batch.sessions,
            "lines": batch.lines, "templates": len(batch.templates), "new_templates": batch.new_templates,
            "replace": batch.replace}


def _reference_sessions(scorer) -> int | None:
    stats = getattr(getattr(scorer, "detector", None), "stats_", None)
    return None if stats is None else int(stats.n_sessions)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", f"Content-Length {declared!r} is not a number") from None
        if n > limit:
            raise ApiError(413, "body_too_large", f"body of {n} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():  # also caps chunked bodies that declare no length
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"body over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # the client's doing, not a failure of ours: one line, and nginx's 499 in the metrics, not a 500
        logger.info("client closed the connection after %d byte(s) of its body to %s", size, request.url.path)
        raise ApiError(CLIENT_CLOSED, "client_closed_request", "the client closed the connection before its body "
                       "was read") from None
    return _decompressed(b"".join(chunks), request.headers.get("content-encoding", ""), limit)


#: Content-Encoding -> zlib window bits (shippers compress their batches: Fluent Bit's `compress gzip`, Vector's
#: `compression = "gzip"`)
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    """The body a compressed request holds, itself capped at `limit` (a small gzip may hold gigabytes).

    A gzip body may be several members back to back (RFC 1952: what concatenating two gzip files gives, and what a
    shipper appending compressed chunks sends): every member is read, under one cap. Bytes after the data that are
    no member are refused, not dropped: they may be lines."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in _ENCODINGS:
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r}; send gzip, deflate or none")
    wbits = _ENCODINGS[encoding]
    out: list[bytes] = []
    size = 0
    rest = body
    while True:
        data, rest = _inflate_one(rest, wbits, limit - size, encoding, limit)
        out.append(data)
        size += len(data)
        if not rest:
            return b"".join(out)
        if wbits == zlib.MAX_WBITS or not rest.startswith(b"\x1f\x8b"):
            raise ApiError(400, "bad_encoding", f"the {encoding} body has {len(rest)} byte(s) of junk after its "
                           "compressed data")


def _inflate_one(data: bytes, wbits: int, room: int, encoding: str, limit: int) -> tuple[bytes, bytes]:
    """(what the first compressed stream of `data` holds, the bytes after it); over `room` bytes is a 413."""
    inflate = zlib.decompressobj(wbits)
    try:
        out = inflate.decompress(data, room + 1)
    except zlib.error as exc:
        raise ApiError(400, "bad_encoding", f"the body is not valid {encoding} ({exc})") from None
    if len(out) > room or inflate.unconsumed_tail:
        raise ApiError(413, "body_too_large", f"the {encoding} body holds over {limit} bytes, the limit")
    if not inflate.eof:
        raise ApiError(400, "bad_encoding", f"the {encoding} body ends early")
    return out, inflate.unused_data


def _add_schemas(app: FastAPI) -> None:
    """Put the request models into the OpenAPI components (the body is read by hand, not by FastAPI)."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        defs = DetectRequest.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {})
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def serve(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_lines: int = DEFAULT_MAX_LINES,
    log_level: str = "info",
    access_log: bool = True,
    allow_mute: bool = False,
    allow_baseline: bool = False,
    ingest: IngestConfig | None = None,
) -> None:
    """Load the artifact in `model_dir` and serve it with uvicorn until interrupted."""
    import uvicorn

    from fusionlog.stream import load_scorer

    if allow_mute and not token:  # before loading the model: a mistake is one quick error
        raise ConfigError(f"--allow-mute needs a token (--token or ${TOKEN_ENV}): a mute silences alerts")
    if allow_baseline and not token:
        raise ConfigError(f"--allow-baseline needs a token (--token or ${TOKEN_ENV}): a baseline silences alerts")
    scorer = load_scorer(model_dir)
    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without a token: anyone who can reach the port can use it", host)
    app = create_app(scorer, token=token or None, max_body_bytes=max_body_bytes, max_lines=max_lines,
                     allow_mute=allow_mute, allow_baseline=allow_baseline, ingest=ingest)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
