"""Datasets: counts match the data READMEs, readers survive bad input, splits keep labels out of the pool."""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fusionlog.config import SessionRule
from fusionlog.data import RawFile, RawSpec, hide_labels, load_dataset, split_sessions
from fusionlog.data.formats import compile_format, json_fields, logfmt_fields, parse_timestamp
from fusionlog.data.logfiles import expand_log_source
from fusionlog.data.named_formats import LOGHUB_FORMATS, resolve_log_format, sniff_formats
from fusionlog.data.paths import resolve_data_dir
from fusionlog.data.raw import read_records
from fusionlog.data.readers import iter_lines
from fusionlog.errors import ConfigError, DataError
from fusionlog.types import ReadStats

# (dataset, sessions, anomalous sessions, templates or None) — from shared/data READMEs
EXPECTED = [
    ("hdfs", 5751, 168, 33),  # 5,583 normal + anomalies sampled to 2.93%
    ("hdfs-100k", 7940, 313, 19),
    ("openstack", 5546, 651, 92),
    ("openstack-deeplog", 2050, 198, 92),
    ("hadoop", 961, 811, 349),
    ("bgl", 100, 28, None),  # 20-line windows of BGL_2k
    ("thunderbird", 100, 0, None),
    ("hdfs-2k", 2200, 69, None),
    ("bgl-normal", 379, 0, None),
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fusionlog.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("name,sessions,anomalous,templates", EXPECTED)
def test_dataset_counts_match_readmes(name, sessions, anomalous, templates, data_dir):
    proc = run_cli("data", "stats", name, "--json", "-q", "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"system", "lines", "sessions", "anomalous_sessions", "templates", "skipped_lines", "files",
                        "empty_files", "truncated_files"}
    assert out["empty_files"] == out["truncated_files"] == 0
    assert out["sessions"] == sessions
    assert out["anomalous_sessions"] == anomalous
    if templates is not None:
        assert out["templates"] == templates


def test_raw_bgl_counts_lines_and_labels(data_dir):
    ds = load_dataset("bgl", data_dir, progress=False)
    assert ds.stats.lines == 2000
    assert ds.time_ordered
    assert ds.store is not None and len(ds.store) == len(ds.templates)
    # 100-line windows: 12 of 20 are anomalous (bgl README)
    wide = load_dataset("bgl", data_dir, rule=SessionRule("lines", window=100), progress=False)
    assert (len(wide.sessions), wide.anomalous) == (20, 12)


def test_thunderbird_normal_keeps_sessions_with_ids_beyond_template_file(data_dir):
    ds = load_dataset("thunderbird-normal", data_dir, progress=False)
    assert len(ds.sessions) == 16
    assert sum(len(s.event_ids) for s in ds.sessions) == 55_845
    assert ds.stats.unknown_events > 0


def test_kalaki_raw_openstack_by_instance(data_dir):
    ds = load_dataset("openstack-raw", data_dir, progress=False)
    assert ds.stats.lines == 43_776
    assert ds.stats.continuation > 0  # traceback lines are counted, not parsed
    labelled = [s for s in ds.sessions if s.label is not None]
    assert labelled and all(s.label == 1 for s in labelled)  # the two abnormal files
    assert any(s.label is None for s in ds.sessions)  # the mixed sample has no labels


@pytest.mark.parametrize("system,fmt", [
    ("Proxifier", r"\[<Time>\] <Program> - <Content>"),
    ("Zookeeper", r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>"),
])
def test_generic_reader_parses_unknown_systems(system, fmt, data_dir):
    """A user's format string is all it takes: contents agree with loghub's structured CSV."""
    log = data_dir / f"loghub2k/{system}/{system}_2k.log"
    spec = RawSpec(system="mine", files=(RawFile(str(log)),), log_format=fmt, rule=SessionRule("lines", window=50))
    ds = load_dataset(str(log), spec=spec, progress=False)
    assert ds.stats.lines == 2000 and ds.stats.unmatched_format == 0
    assert len(ds.sessions) == 40
    with open(data_dir / f"loghub2k/{system}/{system}_2k.log_structured.csv", encoding="utf-8") as fh:
        expected = [row["Content"].strip() for row in csv.DictReader(fh)]
    from fusionlog.data.raw import read_records

    got = [r.text for r in read_records(spec, Path("."), ReadStats())]
    assert got == expected


@pytest.mark.parametrize("system", ["Linux", "Mac", "OpenSSH", "Android", "Proxifier"])
def test_yearless_headers_give_times_so_time_windows_work(system, data_dir):
    """syslog-style headers (`Jun 14 15:16:01`, no year) are read as times: `--seconds` cuts real windows."""
    log = data_dir / f"loghub2k/{system}/{system}_2k.log"
    spec = RawSpec(system="mine", files=(RawFile(str(log)),), log_format=LOGHUB_FORMATS[system],
                   rule=SessionRule("time", seconds=60))
    ds = load_dataset(str(log), spec=spec, progress=False)
    assert ds.time_ordered and len(ds.sessions) > 1
    assert all(s.start is not None and s.end - s.start < 60 for s in ds.sessions)
    assert sum(len(s.event_ids) for s in ds.sessions) == 2000 - ds.stats.skipped


def test_yearless_times_keep_their_differences_and_leap_days():
    one = parse_timestamp({"Month": "Jun", "Date": "14", "Time": "15:16:01"})
    two = parse_timestamp({"Month": "Jun", "Date": "14", "Time": "15:16:02"})
    assert one is not None and two - one == 1.0
    assert parse_timestamp({"Month": "Feb", "Date": "29", "Time": "00:00:00"}) is not None  # read in a leap year
    assert parse_timestamp({"Date": "Dec", "Day": "10", "Time": "06:55:46"}) is not None  # OpenSSH's fields
    full = parse_timestamp({"Date": "2015-07-29", "Time": "17:41:44,747"})  # a date with a year keeps it
    assert full is not None and abs(full - 1438191704.747) < 1e-3
    assert parse_timestamp({"Month": "Jun", "Date": "41", "Time": "15:16:01"}) is None


def test_epoch_times_are_told_by_their_digits():
    assert parse_timestamp({"Timestamp": "1117838570"}) == 1117838570.0
    assert parse_timestamp({"Timestamp": "1117838570123"}) == pytest.approx(1117838570.123)  # milliseconds
    assert parse_timestamp({"Timestamp": "14"}) is None  # a day of the month in a misread header is no time
    assert parse_timestamp({"Time": "1077804742"}) == 1077804742.0  # HPC's epoch in a field named Time
    assert parse_timestamp({"Time": "1077804742123"}) is None  # a Time field holds seconds only


def test_a_named_format_is_its_format_string_and_masks(data_dir):
    """`--log-format zookeeper` reads as loghub's string; `proxifier` brings its HOST mask; a misspelt name is
    a clear error listing the names, never a format string with no <Content>."""
    log = data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log"
    by_name = run_cli("data", "stats", str(log), "--log-format", "ZooKeeper", "--window", "50", "--json")
    by_string = run_cli("data", "stats", str(log), "--log-format", LOGHUB_FORMATS["Zookeeper"], "--window", "50",
                        "--json")
    assert by_name.returncode == 0, by_name.stderr
    assert json.loads(by_name.stdout) == json.loads(by_string.stdout)
    assert json.loads(by_name.stdout)["skipped_lines"] == 0
    px = run_cli("data", "stats", str(data_dir / "loghub2k/Proxifier/Proxifier_2k.log"), "--log-format", "proxifier",
                 "--json")
    assert json.loads(px.stdout)["templates"] == 20  # as the registry's masked proxifier-2k (38 unmasked)
    bad = run_cli("data", "stats", str(log), "--log-format", "zookeper")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "not a named format" in bad.stderr and "zookeeper" in bad.stderr


def test_a_system_config_may_name_its_format(tmp_path, data_dir):
    log = data_dir / "loghub2k/Proxifier/Proxifier_2k.log"
    spec = RawSpec.from_dict({"system": "px", "files": [str(log)], "log_format": "proxifier",
                              "masks": [{"name": "PORT", "pattern": r":\d+"}]})
    assert spec.log_format == LOGHUB_FORMATS["Proxifier"]
    assert [m.name for m in spec.masks] == ["HOST", "PORT"]  # the format's mask first, then the config's


@pytest.mark.parametrize("system", sorted(LOGHUB_FORMATS))
def test_sniffing_ranks_each_loghub_systems_own_format_first(system, data_dir):
    found = sniff_formats(data_dir / f"loghub2k/{system}/{system}_2k.log")
    assert found and found[0] == (system.lower(), 1.0)


def test_a_raw_log_without_a_format_is_told_which_named_formats_read_it(tmp_path, data_dir):
    log = tmp_path / "messages"
    log.write_bytes((data_dir / "loghub2k/Linux/Linux_2k.log").read_bytes())
    proc = run_cli("data", "stats", str(log))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "linux (100%), syslog (100%)" in proc.stderr and "fusionlog data formats" in proc.stderr
    listed = run_cli("data", "formats", str(log))
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].split()[:2] == ["100.0%", "linux"]
    odd = tmp_path / "odd.log"
    odd.write_text("hello\nworld\n")
    proc = run_cli("data", "stats", str(odd))
    assert proc.returncode == 2 and "no named format reads its first lines" in proc.stderr
    assert "no named format reads any" in run_cli("data", "formats", str(odd)).stdout
    listing = run_cli("data", "formats").stdout
    names = listing.split()
    assert "syslog" in names and "zookeeper" in names
    assert "nginx / Apache httpd access logs" in listing  # a reader-function format says what it reads


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
def test_structured_lines_read_by_key_as_the_format_string_reads_the_text(fmt, request, data_dir):
    """A structured logger's JSON or logfmt lines give the same messages, templates, times and time windows as
    loghub's text form of the same log read with its format string."""
    log = request.getfixturevalue(f"zookeeper_{fmt}")
    rule = SessionRule("time", seconds=60)
    text = data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log"
    by_text = load_dataset(str(text), spec=RawSpec(system="zk", files=(RawFile(str(text)),),
                                                    log_format=LOGHUB_FORMATS["Zookeeper"], rule=rule), progress=False)
    spec = RawSpec(system="zk", files=(RawFile(str(log)),), log_format=fmt, rule=rule)
    by_json = load_dataset(str(log), spec=spec, progress=False)
    assert by_json.stats.lines == 2000 and by_json.stats.skipped == 0 and by_json.time_ordered
    assert by_json.templates == by_text.templates
    assert [(s.key, s.event_ids) for s in by_json.sessions] == [(s.key, s.event_ids) for s in by_text.sessions]
    for a, b in zip(by_json.sessions, by_text.sessions, strict=True):
        assert a.start == pytest.approx(b.start, abs=1e-3) and a.end == pytest.approx(b.end, abs=1e-3)


def test_json_lines_that_are_not_records_are_counted_not_fatal(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("\n".join([
        "starting up (not JSON)", "[1, 2]", '{"level": "info"}', '{"msg": ""}', "{broken",
        '{"time": "2026-11-27T10:00:00Z", "msg": "request served in 12 ms", "req": "a1"}',
        '{"time": "2026-11-27T10:00:05+01:00", "message": "request served in 15 ms", "req": "a2"}',
    ]) + "\n")
    spec = RawSpec(system="app", files=(RawFile(str(log)),), log_format="json", rule=SessionRule("lines", window=5))
    ds = load_dataset(str(log), spec=spec, progress=False)
    assert ds.stats.unmatched_format == 5 and sum(len(s.event_ids) for s in ds.sessions) == 2
    # the offset is honoured: 10:00:05+01:00 is 09:00:05Z, the session's start
    assert [s.start for s in ds.sessions] == [parse_timestamp({"Time": "2026-11-27T09:00:05Z"})]
    assert ds.sessions[0].end - ds.sessions[0].start == 3600 - 5
    none = tmp_path / "plain.log"
    none.write_text("plain text\nmore text\n")
    proc = run_cli("data", "stats", str(none), "--log-format", "json")
    assert proc.returncode == 2 and "no line matches the log format 'json'" in proc.stderr
    assert "message key" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_an_exception_beside_a_json_message_tells_failures_from_successes(tmp_path):
    """`request failed` with a Python traceback, a Java stack trace or an ECS error object carries its exception's
    headline into the content, so Drain tells it from the same message without one (which keeps its text)."""
    traceback = "Traceback (most recent call last):\n  File \"app.py\", line 9, in run\nValueError: bad id 42"
    records = [
        {"msg": "request failed", "exc_info": traceback},
        {"message": "request failed", "stack_trace": "java.io.IOException: Connection reset\n\tat a.B(B.java:3)"},
        {"message": "request failed", "error": {"type": "TimeoutError", "message": "deadline exceeded"}},
        {"message": "request failed", "error": None},
    ]
    log = tmp_path / "app.log"
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    spec = RawSpec(system="app", files=(RawFile(str(log)),), log_format="json", rule=SessionRule("lines", window=4))
    ds = load_dataset(str(log), spec=spec, progress=False)
    contents = [r.text for r in read_records(spec, Path("."), ReadStats())]
    assert contents == ["request failed [ValueError: bad id 42]",
                        "request failed [java.io.IOException: Connection reset]",
                        "request failed [TimeoutError: deadline exceeded]", "request failed"]
    ids = ds.sessions[0].event_ids
    assert ids[3] not in ids[:3]


@pytest.mark.parametrize("name,lines,content", [
    ("nginx-error", ["2026/11/28 10:00:00 [error] 31#31: *5 connect() failed (111: Connection refused) while "
                     "connecting to upstream, client: 10.0.0.1", "2026/11/28 10:00:02 [warn] 31#31: *7 an upstream "
                     "response is buffered to a temporary file"], "*5 connect() failed"),
    ("go", ["2026/11/28 10:00:00 http: TLS handshake error from 1.2.3.4:5: EOF",
            "2026/11/28 10:00:01.250000 listening on :8080"], "http: TLS handshake error"),
])
def test_nginx_error_and_go_logs_are_named_read_and_suggested(name, lines, content, tmp_path):
    """Two layouts a new web service writes, with `2026/11/28` dates: named, timed, and ranked first by the
    sniffer over the looser layouts that also read them (Spark's reads nginx's lines)."""
    log = tmp_path / f"{name}.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = RawSpec("web", (RawFile(str(log)),), resolve_log_format(name)[0], SessionRule("time", seconds=60))
    recs = list(read_records(spec, Path("."), ReadStats()))
    assert len(recs) == 2 and recs[0].text.startswith(content)
    assert recs[0].timestamp == parse_timestamp({"Time": "2026-11-28T10:00:00Z"})
    assert recs[1].timestamp - recs[0].timestamp in (1.25, 2.0)
    assert sniff_formats(log)[0] == (name, 1.0)


def test_the_time_reader_reads_every_loghub_log_as_parse_timestamp_does(data_dir):
    """`TimeReader` (the last layout first, repeats remembered) gives `parse_timestamp`'s time on every line of
    the 16 loghub logs, a log mixing layouts, and an epoch `Timestamp` beside a text time."""
    from fusionlog.data.formats import TimeReader, header_reader

    for system, fmt in LOGHUB_FORMATS.items():
        read, times = header_reader(fmt), TimeReader(memo_size=50)
        fields = [read(line.strip()) for line in (data_dir / f"loghub2k/{system}/{system}_2k.log").read_text(
            encoding="utf-8", errors="replace").splitlines() if line.strip()]
        fields = [f for f in fields if f is not None]
        assert [times(f) for f in fields] == [parse_timestamp(f) for f in fields], system
    mixed = [{"Date": "2026-11-28", "Time": "10:00:00"}, {"Month": "Jun", "Date": "14", "Time": "15:16:01"},
             {"Date": "2026-11-28", "Time": "10:00:01"}, {"Time": "2026-11-28T10:00:00Z"}, {"Time": "garbage"},
             {"Timestamp": "1732701600123", "Time": "2026-11-28T10:00:00Z"}]
    times = TimeReader()
    assert [times(f) for f in mixed + mixed] == [parse_timestamp(f) for f in mixed + mixed]


def test_record_keys_are_read_by_priority_whatever_their_case_or_order():
    """Keys are matched once per shape of record (`_record_plan`); each record still gets its own values: a null
    message falls to the next message key, a case variant is the same key, a repeated logfmt key keeps its first."""
    assert json_fields('{"MSG": "a", "Level": "warn"}') == {"Content": "a", "Level": "warn"}
    assert json_fields('{"MSG": "b", "Level": null}') == {"Content": "b"}
    assert json_fields('{"message": null, "msg": "c"}') == {"Content": "c"}
    assert json_fields('{"message": "d", "msg": "c"}') == json_fields('{"msg": "c", "message": "d"}')
    assert json_fields('{"msg": "e", "err": ""}') == {"Content": "e"}  # an empty error adds nothing
    assert json_fields('{"msg": "f", "err": "EOF"}') == {"Content": "f [EOF]"}
    assert json_fields('{"message": null, "msg": null}') is None
    assert logfmt_fields('msg="first" msg="second" ts=1732701600') == {"Content": "first", "Timestamp": "1732701600"}


def test_a_json_log_is_suggested_json_and_a_logfmt_log_logfmt(zookeeper_json, zookeeper_logfmt):
    assert sniff_formats(zookeeper_json)[0] == ("json", 1.0)
    assert sniff_formats(zookeeper_logfmt)[0] == ("logfmt", 1.0)


def test_logfmt_pairs_quotes_and_escapes():
    fields = logfmt_fields('ts=1732701600123 lvl=warn message="said \\"hi\\" to=x" err="EOF" req=a1')
    assert fields == {"Content": 'said "hi" to=x [EOF]', "Timestamp": "1732701600123", "Level": "warn"}
    assert logfmt_fields("level=info no=message") is None
    assert logfmt_fields("Jun 14 15:16:01 combo sshd[1]: authentication failure; uid=0 euid=0") is None


def test_format_string_errors():
    with pytest.raises(ConfigError, match="Content"):
        compile_format("<Date> <Time>")
    with pytest.raises(ConfigError, match="no <Field>"):
        compile_format("just text")


def test_reader_counts_bad_bytes_and_truncates(tmp_path):
    p = tmp_path / "bad.log"
    p.write_bytes(b"ok line\n\xff\xfe broken \x80 bytes\n" + b"x" * 2_000 + b"\nlast\n")
    stats = ReadStats()
    lines = list(iter_lines(p, stats, max_line_bytes=1000))
    assert [n for n, _ in lines] == [1, 2, 3, 4]
    assert stats.decode_errors == 1 and "\ufffd" in lines[1][1]
    assert stats.truncated == 1 and len(lines[2][1]) == 1000
    assert lines[3][1] == "last"


def _coloured(line: str) -> str:
    """A console logger's line: level in colour, the rest reset, a link escape (OSC 8) around the component."""
    for level, code in (("INFO", "32"), ("WARN", "33"), ("ERROR", "1;31")):
        line = line.replace(f" - {level} ", f" - \x1b[{code}m{level}\x1b[0m ", 1)
    return line.replace(" - ", " - \x1b]8;;file:///zk\x1b\\", 1) + "\x1b]8;;\x1b\\\x1b[0m\x1b[K"


def test_terminal_colours_are_read_as_the_plain_log(tmp_path, data_dir):
    """Zookeeper's lines as a colouring console logger writes them read as the plain file: same templates and
    time windows (left in, the escapes fail the format on every line)."""
    plain = data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log"
    lines = plain.read_text(encoding="utf-8").splitlines()
    coloured = tmp_path / "zk-console.log"
    coloured.write_text("\n".join(map(_coloured, lines)) + "\n", encoding="utf-8")
    assert "\x1b[33mWARN\x1b[0m" in coloured.read_text(encoding="utf-8")
    rule = SessionRule("time", seconds=60)
    a, b = (load_dataset(str(p), spec=RawSpec(system="zk", files=(RawFile(str(p)),), log_format=ZK_FORMAT, rule=rule),
                         progress=False) for p in (plain, coloured))
    assert b.stats.skipped == 0 and b.templates == a.templates
    assert [(s.key, s.event_ids) for s in b.sessions] == [(s.key, s.event_ids) for s in a.sessions]


@pytest.mark.parametrize("encoding,gz", [("utf-16", False), ("utf-16-be", False), ("utf-8-sig", False),
                                         ("utf-16", True)])
def test_a_log_with_a_byte_order_mark_reads_as_the_plain_log(encoding, gz, tmp_path, data_dir):
    """A log written as UTF-16 (PowerShell 5's `>`), with a UTF-8 BOM (Notepad), or gzipped UTF-16: same lines,
    templates and time windows as the UTF-8 file, in training and in `detect`'s reader."""
    from fusionlog.stream import file_lines

    plain = data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log"
    text = plain.read_text(encoding="utf-8")
    data = (codecs.BOM_UTF16_BE if encoding == "utf-16-be" else b"") + text.encode(encoding)
    log = tmp_path / "zk.log"
    log.write_bytes(gzip.compress(data) if gz else data)
    assert data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF8[:2])
    rule = SessionRule("time", seconds=60)
    a, b = (load_dataset(str(p), spec=RawSpec("zk", (RawFile(str(p)),), ZK_FORMAT, rule), progress=False)
            for p in (plain, log))
    assert b.stats.decode_errors == 0 and b.stats.skipped == 0 and b.templates == a.templates
    assert [(s.key, s.event_ids) for s in b.sessions] == [(s.key, s.event_ids) for s in a.sessions]
    assert list(file_lines(log)) == text.splitlines()


def test_gzip_lines(tmp_path):
    p = tmp_path / "a.log.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(b"one\ntwo\n")
    assert [t for _, t in iter_lines(p)] == ["one", "two"]


ZK_FORMAT = r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>"


def _rotated_zookeeper(data_dir: Path, folder: Path) -> Path:
    """Zookeeper_2k as logrotate leaves it: oldest part gzipped, a plain `.1`, the live file, an empty `.3`."""
    lines = (data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log").read_bytes().splitlines(keepends=True)
    folder.mkdir()
    with gzip.open(folder / "zk.log.2.gz", "wb") as fh:
        fh.write(b"".join(lines[:700]))
    (folder / "zk.log.1").write_bytes(b"".join(lines[700:1400]))
    (folder / "zk.log").write_bytes(b"".join(lines[1400:]))
    (folder / "zk.log.3").write_bytes(b"")
    (folder / ".zk.log.swp").write_bytes(b"\x00junk")  # hidden: never read
    return folder


def test_a_directory_or_glob_of_rotated_logs_reads_as_the_whole_log(tmp_path, data_dir):
    folder = _rotated_zookeeper(data_dir, tmp_path / "zk")
    assert [p.name for p in expand_log_source(str(folder))] == ["zk.log.3", "zk.log.2.gz", "zk.log.1", "zk.log"]
    assert expand_log_source(str(folder / "zk.log*")) == expand_log_source(str(folder))
    rule = SessionRule("lines", window=20)
    whole = RawSpec("zookeeper", (RawFile(str(data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log")),), ZK_FORMAT, rule)
    parts = RawSpec("zookeeper", tuple(RawFile(str(p)) for p in expand_log_source(str(folder))), ZK_FORMAT, rule)
    a = load_dataset("whole", spec=whole, progress=False)
    b = load_dataset("parts", spec=parts, progress=False)
    assert [[a.templates[e] for e in s.event_ids] for s in a.sessions] == \
        [[b.templates[e] for e in s.event_ids] for s in b.sessions]
    assert [s.start for s in a.sessions] == [s.start for s in b.sessions]
    assert [s.key for s in a.sessions] == [s.key for s in b.sessions]  # lines numbered across the files
    assert b.stats.lines == 2000 and b.stats.empty_files == 1
    proc = run_cli("data", "stats", str(folder), "--log-format", ZK_FORMAT, "--json")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert (stats["system"], stats["lines"], stats["sessions"]) == ("zk", 2000, 100)
    assert (stats["files"], stats["empty_files"], stats["truncated_files"]) == (4, 1, 0)
    literal = folder / "zk[1].log"  # a file whose name looks like a glob is that file
    literal.write_bytes((folder / "zk.log").read_bytes())
    assert expand_log_source(str(literal)) == [literal]
    none = run_cli("data", "stats", str(folder / "nothing*.log"), "--log-format", ZK_FORMAT)
    assert none.returncode == 2 and "matches no log file" in none.stderr


@pytest.mark.parametrize("rule", [SessionRule("time", seconds=60), SessionRule("lines", window=20)])
def test_files_running_through_the_same_minutes_keep_their_windows_apart(rule, tmp_path, data_dir):
    """Two pods' logs read as one log run through the same minutes: every window has its own key (a second
    window on a minute is `time:B.1`), and `detect`'s streaming reader names them alike."""
    from fusionlog.stream import StreamLimits, StreamSessionizer

    lines = (data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log").read_text(encoding="utf-8").splitlines()[:1000]
    files = []
    for pod in ("a", "b"):
        files.append(tmp_path / f"app-{pod}.log")
        files[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = RawSpec("zk", tuple(RawFile(str(p)) for p in files), ZK_FORMAT, rule)
    ds = load_dataset("pods", spec=spec, progress=False)
    keys = [s.key for s in ds.sessions]
    assert len(keys) == len(set(keys)) and sum(len(s.event_ids) for s in ds.sessions) == 2000
    if rule.kind == "time":
        one = load_dataset("pod", spec=RawSpec("zk", (RawFile(str(files[0])),), ZK_FORMAT, rule), progress=False)
        second = keys[len(one.sessions):]
        minutes = {s.key.split(".")[0] for s in one.sessions}  # Zookeeper's own times go back too: `.1`s there
        assert second and all(k.split(".")[0] in minutes and "." in k for k in second)
    sz = StreamSessionizer(ds.store.match_line, rule, ZK_FORMAT, StreamLimits(idle_seconds=None))
    out = sz.feed_many(line for p in files for _, line in iter_lines(p)) + sz.flush()
    assert [(s.key, s.event_ids) for s in out] == [(s.key, s.event_ids) for s in ds.sessions]


def test_a_cut_or_misnamed_gzip_is_read_not_a_crash(tmp_path):
    body = b"".join(b"line %d of the log\n" % i for i in range(20_000))
    whole = tmp_path / "whole.gz"
    whole.write_bytes(gzip.compress(body))
    cut = tmp_path / "cut.log.gz"  # a rotation compressed while it was copied
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    stats = ReadStats()
    lines = [t for _, t in iter_lines(cut, stats)]
    assert 0 < len(lines) < 20_000 and stats.truncated_files == 1
    assert lines[:-1] == [f"line {i} of the log" for i in range(len(lines) - 1)]  # the last may be cut mid-line
    plain = tmp_path / "plain.log.gz"  # gunzipped without renaming
    plain.write_bytes(body[:100])
    assert [t for _, t in iter_lines(plain)][0] == "line 0 of the log"
    rotated = tmp_path / "app.log.2"  # compressed by rotation, no .gz
    rotated.write_bytes(gzip.compress(body[:100]))
    assert [t for _, t in iter_lines(rotated)][0] == "line 0 of the log"
    pipe = tmp_path / "pipe"  # `detect <(cat app.log.2.gz)`: a pipe opens once, so telling gzip must not consume
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_bytes, args=(whole.read_bytes(),))
    writer.start()
    assert len(list(iter_lines(pipe))) == 20_000
    writer.join()


def test_a_format_that_matches_nothing_shows_the_first_line_and_why(tmp_path):
    """loghub's convention: literal text is a regex, so an unescaped `[` is a character class."""
    log = tmp_path / "zk.log"
    log.write_text("2015-07-29 17:41:44,747 - INFO  [QuorumPeer[myid=1]/0:2181:FastLeaderElection@774] - time out\n")
    plain = "<Date> <Time> - <Level>  [<Node>:<Component>@<Id>] - <Content>"
    proc = run_cli("data", "stats", str(log), "--log-format", plain, "--json")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "2015-07-29 17:41:44,747 - INFO" in proc.stderr and r"escape [ ] as \[ \]" in proc.stderr
    escaped = r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>"
    ok = run_cli("data", "stats", str(log), "--log-format", escaped, "--json")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("case", ["empty", "missing", "nomatch", "labels", "untimed"])
def test_bad_input_is_one_clear_line_exit_2(case, tmp_path):
    log = tmp_path / "app.log"
    args = ["data", "stats", str(log), "--log-format", "<Date> <Level> <Content>", "--json"]
    if case == "empty":
        log.write_bytes(b"")
        needle = "empty"
    elif case == "missing":
        needle = "not found"
    elif case == "nomatch":
        log.write_text("onlyonetoken\nanother\n")
        needle = "no line matches the log format"
    elif case == "untimed":  # time windows over lines whose header gives no time: not one silent whole-log window
        log.write_text("2024-01-01 INFO started\n2024-01-02 INFO stopped\n")
        args += ["--seconds", "60"]
        needle = "need a time in each line"
    else:
        log.write_text("2024-01-01 INFO started job blk_1\n")
        args += ["--key-regex", r"(blk_\d+)", "--label-file", str(tmp_path / "labels.csv")]
        needle = "label file not found"
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr and str(tmp_path) in proc.stderr
    assert proc.stderr.count(str(log)) <= 1  # named once at most (a reader's error was named twice)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_dataset_name_is_clear():
    proc = run_cli("data", "stats", "no-such-set", "--json")
    assert proc.returncode == 2 and "not a known dataset" in proc.stderr


def test_jsonl_sessions_templates_and_lines(tmp_path):
    p = tmp_path / "mine.jsonl"
    rows = [
        {"key": "a", "label": 0, "templates": ["open file", "close file"]},
        {"key": "b", "label": 1, "lines": ["disk error on sda 12", "disk error on sdb 13"]},
        {"key": "c", "templates": ["open file"]},
        {"nokey": 1},
        "not an object",
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n")
    ds = load_dataset(str(p))
    assert [s.key for s in ds.sessions] == ["a", "b", "c"]
    assert [s.label for s in ds.sessions] == [0, 1, None]
    assert ds.stats.unmatched_format == 3
    b = ds.sessions[1]
    assert b.event_ids[0] == b.event_ids[1]  # two lines, one Drain template
    assert ds.templates[ds.sessions[2].event_ids[0]] == "open file"
    proc = run_cli("data", "stats", str(p), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["sessions"] == 3


def test_jsonl_with_nothing_usable_is_an_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n')
    with pytest.raises(DataError, match="no usable session"):
        load_dataset(str(p))


def test_split_by_time_and_by_shuffle(data_dir):
    bgl = load_dataset("bgl", data_dir, progress=False)
    sp = split_sessions(bgl)
    assert sp.method == "time"
    assert max(s.start for s in sp.pool) <= min(s.start for s in sp.test)
    assert (len(sp.pool), len(sp.test)) == (60, 40)
    osk = load_dataset("openstack", data_dir)
    a, b = split_sessions(osk, seed=1), split_sessions(osk, seed=1)
    assert a.method == "shuffle(seed=1)"
    assert [s.key for s in a.test] == [s.key for s in b.test]
    assert 0 < a.summary()["test_anomalies"] < len(a.test)  # grouped file order would put all in test
    assert all(s.label is None for s in hide_labels(a.pool))


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUSIONLOG_DATA", str(env_dir))
    assert resolve_data_dir(None) == env_dir
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    assert resolve_data_dir(explicit) == explicit
    with pytest.raises(DataError, match="not a directory"):
        resolve_data_dir(tmp_path / "nope")
    monkeypatch.delenv("FUSIONLOG_DATA")
    (tmp_path / "data").mkdir()
    assert resolve_data_dir(None) == tmp_path / "data"


def test_download_offline_fails_fast(tmp_path):
    proc = run_cli("data", "download", "BGL", "--data-dir", str(tmp_path), "--timeout", "3")
    assert proc.returncode == 2
    assert "BGL" in proc.stderr and "Traceback" not in proc.stderr


HOST_MASK = r"HOST=(?<![\w.-])(?:[A-Za-z0-9-]+\.)+[A-Za-z][A-Za-z0-9-]*:\d{1,5}(?!\w)"


def test_proxifier_masks_leading_host_ports_so_hosts_share_templates(data_dir):
    """Drain keys its prefix tree on leading tokens: unmasked, every destination host grows its own templates."""
    from dataclasses import replace

    from fusionlog.data.raw import load_raw
    from fusionlog.data.registry import _REGISTRY

    masked = load_dataset("proxifier-2k", data_dir, progress=False)
    plain = load_raw("proxifier-2k", replace(_REGISTRY["proxifier-2k"].spec, masks=()), data_dir, progress=False)
    assert any(t.startswith("<:HOST:> open through proxy <:HOST:>") for t in masked.templates)
    assert not any("cuhk.edu.hk:" in t for t in masked.templates)
    assert len(masked.templates) < len(plain.templates) * 0.6
    assert len(masked.sessions) == len(plain.sessions) == 100


def test_user_masks_from_the_cli_and_their_clear_errors(tmp_path):
    log = tmp_path / "proxy.log"
    hosts = ["a.example.com:443", "b.example.org:80", "c.example.net:8080", "d.example.io:5070"]
    log.write_text("".join(f"{h} open through proxy gw.example.com:3128 HTTPS\n" for h in hosts * 5))
    base = ["data", "stats", str(log), "--log-format", "<Content>", "--window", "5", "--json"]
    plain, masked = run_cli(*base), run_cli(*base, "--mask", HOST_MASK)
    assert plain.returncode == 0 and masked.returncode == 0, masked.stderr
    assert json.loads(masked.stdout)["templates"] == 1 < json.loads(plain.stdout)["templates"]
    for bad, needle in (("HOST", "expected NAME=REGEX"), ("HOST=(", "valid regex"), ("a b=x", "must be a word")):
        proc = run_cli(*base, "--mask", bad)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    named = run_cli("data", "stats", "bgl", "--json", "--mask", HOST_MASK)
    assert named.returncode == 2 and "raw log files" in named.stderr


def test_a_system_config_carries_its_masks_into_the_saved_drain_state(tmp_path):
    """The served matcher reads the masks back from drain_state.json, so <:HOST:> keeps its meaning there."""
    from fusionlog.config import MaskRule
    from fusionlog.constants import DRAIN_STATE_NAME
    from fusionlog.parsing import TemplateStore
    from fusionlog.served import _parse_config

    spec = RawSpec.from_dict({"system": "proxy", "files": ["x.log"], "masks": [{"name": "HOST", "pattern": "h:\\d+"}]})
    assert spec.masks == (MaskRule("h:\\d+", "HOST"),)
    parse = spec.parse_config(None)
    assert parse.extra_masks == spec.masks
    store = TemplateStore("proxy", parse)
    eid = store.fit_line("h:443 open")
    assert store.templates[eid] == "<:HOST:> open"  # before NUM takes the port
    store.save(tmp_path / DRAIN_STATE_NAME)
    assert _parse_config(tmp_path).extra_masks == spec.masks
    assert _parse_config(tmp_path / "none") is None
    with pytest.raises(ConfigError, match="valid regex"):
        RawSpec.from_dict({"system": "proxy", "files": ["x.log"], "masks": [{"name": "HOST", "pattern": "("}]})


def test_a_wrong_format_on_lines_with_space_runs_is_refused_not_hung(tmp_path, data_dir):
    """Android's format on Windows lines (18-space runs): with every field `.*?` one line tried every way of
    spreading its words over the fields (over 20 s a line); fields between spaces are now single tokens."""
    lines = (data_dir / "loghub2k/Windows/Windows_2k.log").read_text().splitlines()[:200]
    log = tmp_path / "win.log"
    log.write_text("\n".join(lines) + "\n")
    android = "<Date> <Time>  <Pid>  <Tid> <Level> <Component>: <Content>"
    proc = run_cli("data", "stats", str(log), "--log-format", android, "--json")  # run_cli's timeout: 300 s
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["skipped_lines"] > 150  # read to the end: lines that do not fit are counted
    pattern, _ = compile_format(r"\[<Time>\] \[<Level>\] <Content>")  # a field inside literals keeps its spaces
    m = pattern.match("[Sun Dec 04 04:47:44 2005] [notice] workerEnv.init() ok")
    assert m["Time"] == "Sun Dec 04 04:47:44 2005" and m["Level"] == "notice"
    hdfs, _ = compile_format("<Date> <Time> <Pid> <Level> <Component>: <Content>")
    m = hdfs.match("081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 terminating")
    assert (m["Pid"], m["Level"], m["Component"]) == ("148", "INFO", "dfs.DataNode$PacketResponder")
