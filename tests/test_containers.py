"""Container runtimes' lines (Docker json-file, Kubernetes CRI): unwrapped, then read with the inner format."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fusionlog.config import SessionRule
from fusionlog.data import RawFile, RawSpec, load_dataset
from fusionlog.data.containers import cri_line, docker_line, split_wrapper
from fusionlog.data.named_formats import resolve_log_format, sniff_formats
from fusionlog.data.readers import iter_lines
from fusionlog.errors import ConfigError
from fusionlog.stream import StreamLimits, StreamSessionizer

RUNTIME_START = datetime(2026, 11, 28, 10, 0, 0, tzinfo=timezone.utc)


def _runtime_time(i: int, seconds: float = 1.0) -> str:
    return (RUNTIME_START + timedelta(seconds=i * seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def _wrap(wrapper: str, line: str, when: str) -> str:
    if wrapper == "docker":
        return json.dumps({"log": line + "\n", "stream": "stdout", "time": when})
    return f"{when} stdout F {line}"


def _write(path: Path, wrapper: str, lines: list[str], seconds: float = 1.0) -> Path:
    path.write_text("\n".join(_wrap(wrapper, ln, _runtime_time(i, seconds)) for i, ln in enumerate(lines)) + "\n",
                    encoding="utf-8")
    return path


def _load(path: Path, log_format: str, rule: SessionRule):
    fmt, masks = resolve_log_format(log_format)
    spec = RawSpec(system="svc", files=(RawFile(str(path)),), log_format=fmt, rule=rule, masks=masks)
    return load_dataset(str(path), spec=spec, progress=False), spec


def test_unwrapping_reads_the_services_line_and_the_runtimes_time():
    assert docker_line('{"log":"INFO up\\n","stream":"stderr","time":"2026-11-28T10:00:00.000000001Z"}') == (
        "INFO up", "2026-11-28T10:00:00.000000001Z", False)
    assert docker_line('{"log":"half a li","stream":"stderr","time":"2026-11-28T10:00:00Z"}')[2] is True
    assert cri_line("2026-11-28T10:00:00.123456789+01:00 stderr P half a li") == (
        "half a li", "2026-11-28T10:00:00.123456789+01:00", True)
    assert cri_line("2026-11-28T10:00:00Z stdout F ne")[2] is False
    assert docker_line('{"msg": "not docker"}') is None and docker_line("plain") is None
    assert cri_line("2026-11-28 10:00:00 INFO not cri") is None
    assert split_wrapper("docker") == ("docker", "<Content>") and split_wrapper("CRI:json") == ("cri", "json")
    assert split_wrapper("<Date> <Content>") is None and split_wrapper("dockerd") is None


@pytest.mark.parametrize("wrapper", ["docker", "cri"])
def test_a_containers_log_reads_as_the_services_own_file(wrapper, tmp_path, data_dir):
    """Zookeeper's lines as Docker / a Kubernetes node stores them: `wrapper:zookeeper` gives the plain file's
    templates and time windows (the service's own times win over the runtime's), streaming reads the same
    sessions, and the sniffer suggests `wrapper:zookeeper` first."""
    plain = data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log"
    lines = plain.read_text(encoding="utf-8").splitlines()
    log = _write(tmp_path / f"{wrapper}.log", wrapper, lines)
    rule = SessionRule("time", seconds=60)
    ref, _ = _load(plain, "zookeeper", rule)
    ds, spec = _load(log, f"{wrapper}:zookeeper", rule)
    assert ds.stats.skipped == 0 and ds.templates == ref.templates
    assert [(s.key, s.event_ids) for s in ds.sessions] == [(s.key, s.event_ids) for s in ref.sessions]
    assert [s.start for s in ds.sessions] == pytest.approx([s.start for s in ref.sessions], abs=1e-6)
    sz = StreamSessionizer(ds.store.match_line, rule, spec.log_format, StreamLimits(idle_seconds=None))
    out = sz.feed_many(line for _, line in iter_lines(log)) + sz.flush()
    assert [(s.key, s.event_ids) for s in out] == [(s.key, s.event_ids) for s in ds.sessions]
    assert [name for name, _ in sniff_formats(log)[:2]] == [f"{wrapper}:zookeeper", wrapper]


@pytest.mark.parametrize("wrapper", ["docker", "cri"])
def test_the_runtimes_time_serves_a_service_that_logs_none(wrapper, tmp_path, data_dir):
    """`INFO job done` with no time of its own: time windows follow the runtime's times (40 s apart here)."""
    lines = [f"{'ERROR' if i % 5 == 4 else 'INFO'} job {i} {'failed' if i % 5 == 4 else 'done'}" for i in range(12)]
    log = _write(tmp_path / "svc.log", wrapper, lines, seconds=40)
    ds, _ = _load(log, f"{wrapper}:<Level> <Content>", SessionRule("time", seconds=60))
    assert ds.stats.skipped == 0 and ds.time_ordered
    assert [len(s.event_ids) for s in ds.sessions] == [2, 1, 2, 1, 2, 1, 2, 1]  # 0,40 | 80 | 120,160 | ...
    assert ds.sessions[0].start == pytest.approx(RUNTIME_START.timestamp(), abs=1e-3)


def test_a_structured_logger_in_a_container_reads_with_docker_json(tmp_path, zookeeper_json):
    """JSON lines inside Docker's JSON: `docker:json` reads the inner record by key, times from the record."""
    inner = zookeeper_json.read_text(encoding="utf-8").splitlines()
    log = _write(tmp_path / "json-in-docker.log", "docker", inner)
    rule = SessionRule("time", seconds=60)
    ref, _ = _load(zookeeper_json, "json", rule)
    ds, _ = _load(log, "docker:json", rule)
    assert ds.templates == ref.templates
    assert [(s.key, s.event_ids) for s in ds.sessions] == [(s.key, s.event_ids) for s in ref.sessions]
    assert sniff_formats(log)[0][0] == "docker:json"


def test_wrapped_formats_resolve_with_their_inner_masks_and_errors_name_the_cause(tmp_path):
    assert resolve_log_format("cri:proxifier")[0].startswith("cri:\\[<Time>\\] <Program>")
    assert [m.name for m in resolve_log_format("cri:proxifier")[1]] == ["HOST"]
    assert resolve_log_format("docker") == ("docker:<Content>", ())
    with pytest.raises(ConfigError, match="one container wrapper"):
        resolve_log_format("docker:cri:json")
    with pytest.raises(ConfigError, match="not a named format"):
        resolve_log_format("docker:zookeper")
    log = _write(tmp_path / "svc.log", "docker", ["oops"])
    proc = subprocess.run([sys.executable, "-m", "fusionlog.cli", "data", "stats", str(log), "--log-format",
                           "docker:<Date> <Time> <Level> <Content>", "--window", "5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "docker lines (a JSON object with a 'log' key) are unwrapped" in proc.stderr


@pytest.mark.parametrize("wrapper", ["docker", "cri"])
def test_a_line_the_runtime_split_is_joined_again(wrapper, tmp_path):
    """A JSON record with a deep Java trace (40 KiB) that the runtime cut into 16 KiB chunks reads as the one
    record it was (its exception in the content); the held chunks count as continuation lines, and streaming
    joins them alike."""
    frames = "".join(f"\n\tat com.shop.orders.Handler.step{i}(Handler.java:{i})" for i in range(900))
    big = json.dumps({"time": "2026-11-28T10:00:01Z", "level": "error", "msg": "order failed",
                      "stack_trace": "java.sql.SQLTransientConnectionException: pool exhausted" + frames})
    small = [json.dumps({"time": f"2026-11-28T10:00:0{i}Z", "level": "info", "msg": f"order {i} placed"})
             for i in (0, 2)]
    assert len(big) > 40_000
    chunks = [big[i:i + 16_384] for i in range(0, len(big), 16_384)]
    rows = []
    for i, text in enumerate([small[0], *chunks, small[1]]):
        partial = 1 <= i <= len(chunks) - 1  # every chunk of the big line but its last
        when = _runtime_time(i)
        if wrapper == "docker":
            rows.append(json.dumps({"log": text + ("" if partial else "\n"), "stream": "stdout", "time": when}))
        else:
            rows.append(f"{when} stdout {'P' if partial else 'F'} {text}")
    log = tmp_path / "split.log"
    log.write_text("\n".join(rows) + "\n", encoding="utf-8")
    rule = SessionRule("lines", window=10)
    ds, spec = _load(log, f"{wrapper}:json", rule)
    contents = [ds.templates[i] for i in ds.sessions[0].event_ids]
    assert len(contents) == 3 and "[java.sql.SQLTransientConnectionException: pool exhausted]" in contents[1]
    assert ds.stats.continuation == len(chunks) - 1 and ds.stats.unmatched_format == 0
    sz = StreamSessionizer(ds.store.match_line, rule, spec.log_format, StreamLimits(idle_seconds=None))
    out = sz.feed_many(line for _, line in iter_lines(log)) + sz.flush()
    assert [s.event_ids for s in out] == [s.event_ids for s in ds.sessions]
    assert sz.stats.read.continuation == len(chunks) - 1


@pytest.mark.parametrize("wrapper", ["docker", "cri"])
def test_a_session_key_is_searched_in_the_services_line_not_the_runtimes(wrapper, tmp_path):
    """A key regex written for the service's JSON (`"req": "r0"`) reads through Docker's escaping (`\\"req\\"`),
    and a key in the first chunk of a line the runtime split names the joined line's session: in training and
    in streaming alike, no line left without its key."""
    frames = "".join(f"\n\tat com.shop.orders.Handler.step{i}(Handler.java:{i})" for i in range(900))
    big = json.dumps({"req": "r0", "time": "2026-11-28T10:00:09Z", "level": "error", "msg": "order failed",
                      "stack_trace": "java.io.IOException: broken pipe" + frames})
    chunks = [big[i:i + 16_384] for i in range(0, len(big), 16_384)]
    rows, n = [], 0
    for i in range(6):
        rec = json.dumps({"time": f"2026-11-28T10:00:0{i}Z", "level": "info", "msg": f"step {i // 2} done",
                          "req": f"r{i % 2}"})
        rows.append(_wrap(wrapper, rec, _runtime_time(n)))
        n += 1
    for j, text in enumerate(chunks):
        partial = j < len(chunks) - 1
        when = _runtime_time(n)
        n += 1
        rows.append(json.dumps({"log": text + ("" if partial else "\n"), "stream": "stdout", "time": when})
                    if wrapper == "docker" else f"{when} stdout {'P' if partial else 'F'} {text}")
    assert '"req": "r0"' not in chunks[-1]  # the key is only in the first chunk
    log = tmp_path / "keyed.log"
    log.write_text("\n".join(rows) + "\n", encoding="utf-8")
    rule = SessionRule("key", key_pattern='"req": *"([^"]+)"')
    ds, spec = _load(log, f"{wrapper}:json", rule)
    assert ds.stats.no_session_key == 0
    by_key = {s.key: [ds.templates[e] for e in s.event_ids] for s in ds.sessions}
    assert sorted(by_key) == ["r0", "r1"] and len(by_key["r0"]) == 4 and len(by_key["r1"]) == 3
    assert "[java.io.IOException: broken pipe]" in by_key["r0"][-1]
    sz = StreamSessionizer(ds.store.match_line, rule, spec.log_format, StreamLimits(idle_seconds=None))
    out = sz.feed_many(line for _, line in iter_lines(log)) + sz.flush()
    assert sorted((s.key, s.event_ids) for s in out) == sorted((s.key, s.event_ids) for s in ds.sessions)
    assert sz.stats.read.no_session_key == 0
    if wrapper == "docker":  # a regex written for the runtime's escaped JSON (before stop 24) still finds keys live
        escaped = SessionRule("key", key_pattern=r'\\"req\\": *\\"([^\\"]+)')
        sz = StreamSessionizer(ds.store.match_line, escaped, spec.log_format, StreamLimits(idle_seconds=None))
        old = sz.feed_many(line for _, line in iter_lines(log)) + sz.flush()
        assert sorted(s.key for s in old) == ["r0", "r1"] and sz.stats.read.no_session_key == 1  # the chunk's end


def test_a_chunk_left_held_at_the_end_of_one_input_is_not_glued_onto_the_next():
    """The HTTP service shares one parser between requests: a request that ends inside a split line must not
    prefix the next request's first line with its chunk."""
    from fusionlog.stream import HeaderParser

    parser = HeaderParser("docker:<Content>")
    assert parser.parse_timed(json.dumps({"log": "the first half of a long li", "time": _runtime_time(0)})) is False
    parser.reset()
    content, _ = parser.parse_timed(json.dumps({"log": "INFO next request\n", "time": _runtime_time(1)}))
    assert content == "INFO next request"
