"""Web servers' access logs (`--log-format access`): the status in words and the route make the message."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fusionlog.config import SessionRule
from fusionlog.data import RawFile, RawSpec, load_dataset
from fusionlog.data.access import access_fields
from fusionlog.data.formats import parse_timestamp
from fusionlog.data.named_formats import sniff_formats
from fusionlog.data.readers import iter_lines
from fusionlog.stream import StreamLimits, StreamSessionizer

START = datetime(2026, 11, 28, 10, 0, 0, tzinfo=timezone(timedelta(hours=1)))
ROUTES = ("/api/users/{n}?page=2", "/api/orders/{n}", "/static/app.js", "/healthz")


def _line(i: int, route: str, status: int, method: str = "GET") -> str:
    when = (START + timedelta(seconds=i)).strftime("%d/%b/%Y:%H:%M:%S %z")
    return (f'10.0.0.{i % 7 + 1} - - [{when}] "{method} {route} HTTP/1.1" {status} {100 + i % 900} '
            f'"https://shop.example/" "Mozilla/5.0 (X11; Linux x86_64)"')


@pytest.fixture(scope="module")
def access_log(tmp_path_factory) -> Path:
    """Ten minutes of a shop's traffic, one request a second; minute 6 is a burst of 503s on orders."""
    lines = []
    for i in range(600):
        route = ROUTES[i % len(ROUTES)].format(n=1000 + i)
        if 360 <= i < 420 and i % 2 == 0:
            lines.append(_line(i, f"/api/orders/{i}", 503))
        else:
            lines.append(_line(i, route, 404 if i % 97 == 0 else 200))
    path = tmp_path_factory.mktemp("web") / "access.log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("line,content,level", [
    ('1.2.3.4 - - [28/Nov/2026:10:00:00 +0100] "GET /api/users/42?page=2 HTTP/1.1" 200 512 "-" "curl/8.0"',
     "OK GET api users 42", "INFO"),
    ('1.2.3.4 - bob [28/Nov/2026:10:00:00 +0100] "POST / HTTP/2.0" 500 0', "INTERNAL_SERVER_ERROR POST /", "ERROR"),
    ('1.2.3.4 - - [28/Nov/2026:10:00:00 +0100] "-" 408 0 "-" "-"', "REQUEST_TIMEOUT -", "WARN"),
    ('1.2.3.4 - - [28/Nov/2026:10:00:00 +0100] "\\x16\\x03\\x01" 400 157 "-" "-"', "BAD_REQUEST \\x16\\x03\\x01",
     "WARN"),
    ('1.2.3.4 - - [28/Nov/2026:10:00:00 +0100] "GET /q?a=\\"x\\" HTTP/1.1" 499 0 "-" "-"', "CLIENT_ERROR GET q",
     "WARN"),
])
def test_an_access_line_gives_status_words_and_the_route(line, content, level):
    fields = access_fields(line)
    assert fields == {"Content": content, "Time": "28/Nov/2026:10:00:00 +0100", "Level": level}


def test_lines_that_are_no_access_lines_are_not_read():
    assert access_fields("2026-11-28 10:00:00 INFO started") is None
    assert access_fields('1.2.3.4 - - [28/Nov/2026:10:00:00 +0100] "GET / HTTP/1.1" ok 0') is None


def test_access_times_honour_their_offset():
    assert parse_timestamp({"Time": "28/Nov/2026:10:00:00 +0100"}) == parse_timestamp({"Time": "2026-11-28T09:00:00Z"})


def test_an_access_log_gives_one_template_per_status_and_route(access_log):
    """Drain keeps a 503 apart from a 200 on the same route (digits would have merged them), and time windows
    follow the requests' times; the sniffer names the format."""
    ds = load_dataset(str(access_log), spec=RawSpec("shop", (RawFile(str(access_log)),), "access",
                                                    SessionRule("time", seconds=60)), progress=False)
    assert ds.stats.skipped == 0 and len(ds.sessions) == 10 and ds.time_ordered
    assert "SERVICE_UNAVAILABLE GET api orders <:NUM:>" in ds.templates
    assert "OK GET healthz" in ds.templates and "NOT_FOUND GET static app.js" in ds.templates
    unavailable = ds.templates.index("SERVICE_UNAVAILABLE GET api orders <:NUM:>")
    assert [unavailable in s.event_ids for s in ds.sessions] == [i == 6 for i in range(10)]
    assert sniff_formats(access_log)[0] == ("access", 1.0)


def test_sessions_per_client_stream_as_they_read(access_log):
    rule = SessionRule("key", key_pattern=r"^(\S+)")
    ds = load_dataset(str(access_log), spec=RawSpec("shop", (RawFile(str(access_log)),), "access", rule),
                      progress=False)
    assert len(ds.sessions) == 7
    sz = StreamSessionizer(ds.store.match_line, rule, "access", StreamLimits(idle_seconds=None))
    out = sz.feed_many(line for _, line in iter_lines(access_log)) + sz.flush()
    assert sorted((s.key, s.event_ids) for s in out) == sorted((s.key, s.event_ids) for s in ds.sessions)
