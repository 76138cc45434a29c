"""`detect --metrics-file`: a running detect's counters for node_exporter's textfile collector."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from fusionlog.cli import main
from fusionlog.metrics_file import MetricsFile
from fusionlog.served import load_scorer
from fusionlog.stream import StreamLimits, detect_stream, scorer_sessionizer


def _samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, for the exposition format's sample lines."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture(scope="module")
def bgl_log(data_dir):
    return data_dir / "loghub2k/BGL/BGL_2k.log"


def test_detect_keeps_the_counters_serve_would_in_a_file(bgl_artifact, bgl_log, tmp_path):
    prom, out = tmp_path / "fusionlog.prom", tmp_path / "verdicts.jsonl"
    assert main(["detect", "--model", str(bgl_artifact), str(bgl_log), "-o", str(out),
                 "--metrics-file", str(prom)]) == 0
    verdicts = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    text = prom.read_text(encoding="utf-8")
    got = _samples(text)
    assert got["fusionlog_lines_total"] == 2000
    assert got["fusionlog_sessions_scored_total"] == len(verdicts) == 100
    assert got["fusionlog_anomalies_total"] == sum(v["anomalous"] for v in verdicts) > 0
    assert got["fusionlog_sessions_with_new_templates_total"] == sum(bool(v["new_templates"]) for v in verdicts)
    assert got["fusionlog_up"] == 0 and got["fusionlog_open_sessions"] == 0  # finished: everything was scored
    assert got['fusionlog_skipped_lines_total{reason="unmatched_format"}'] == 0
    assert got["fusionlog_reference_sessions"] == 60
    assert got["fusionlog_metrics_written_timestamp_seconds"] >= got["fusionlog_started_timestamp_seconds"]
    assert "# TYPE fusionlog_anomalies_total counter" in text
    # the drift gauges: recent flagged share beside the share of its own pool the artifact flagged in training
    assert got["fusionlog_recent_flagged_share"] == pytest.approx(got["fusionlog_anomalies_total"] / 100)
    report = json.loads((bgl_artifact / "report.json").read_text(encoding="utf-8"))
    assert got["fusionlog_pool_flagged_share"] == pytest.approx(report["findings"]["flagged_share"])
    # --anomalies-only writes fewer verdicts but the counters still count every session judged
    assert main(["detect", "--model", str(bgl_artifact), str(bgl_log), "-o", str(out), "--anomalies-only",
                 "--metrics-file", str(prom)]) == 0
    assert _samples(prom.read_text(encoding="utf-8"))["fusionlog_sessions_scored_total"] == 100


def test_a_live_detect_rewrites_the_file_as_it_goes(bgl_artifact, bgl_log, tmp_path):
    """A collector must see progress while the stream runs, not only at its end: heartbeats and every 1,024
    lines look at the clock (here one that moves 20 s per look, past the 15 s interval)."""
    scorer = load_scorer(bgl_artifact)
    sz = scorer_sessionizer(scorer, StreamLimits(idle_seconds=None))
    prom = tmp_path / "live.prom"
    clock = itertools.count(1_000_000, 20).__next__
    metrics = MetricsFile(prom, sz, scorer, interval=15, clock=clock)
    assert _samples(prom.read_text(encoding="utf-8"))["fusionlog_up"] == 1  # visible before the first line
    lines = bgl_log.read_text(encoding="utf-8").splitlines()
    seen = []

    def stream():
        yield from lines[:1100]
        yield None  # a quiet moment: the heartbeat scores what is pending and looks at the clock
        seen.append(_samples(prom.read_text(encoding="utf-8")))
        yield from lines[1100:]

    for verdict in detect_stream(scorer, metrics.lines(stream()), sessionizer=sz):
        metrics.record(verdict)
    mid = seen[0]
    assert mid["fusionlog_up"] == 1 and 1024 <= mid["fusionlog_lines_total"] <= 1100
    metrics.write(up=False)
    end = _samples(prom.read_text(encoding="utf-8"))
    assert end["fusionlog_lines_total"] == 2000 and end["fusionlog_up"] == 0
    assert end["fusionlog_sessions_scored_total"] == 100 > mid["fusionlog_sessions_scored_total"]


def test_a_metrics_file_that_cannot_be_written_is_a_clear_error(bgl_artifact, bgl_log, tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "x.prom"
    assert main(["detect", "--model", str(bgl_artifact), str(bgl_log), "--metrics-file", str(missing)]) == 2
    assert re.search(r"--metrics-file .*x\.prom: the folder .* does not exist", capsys.readouterr().err)
    assert main(["detect", "--model", str(bgl_artifact), str(bgl_log), "--metrics-file", str(tmp_path)]) == 2
    assert f"--metrics-file {tmp_path}: cannot write it" in capsys.readouterr().err  # a folder: not a warning a write
    with pytest.raises(SystemExit) as stopped:  # refused by argparse under the option's name, before any work
        main(["detect", "--model", str(bgl_artifact), str(bgl_log), "--metrics-file", str(tmp_path / "m.prom"),
              "--metrics-interval", "0"])
    assert stopped.value.code == 2
    assert "argument --metrics-interval: 0: must be a number of seconds above 0" in capsys.readouterr().err


def test_serve_shows_the_same_drift_gauges(bgl_artifact, bgl_log):
    from fastapi.testclient import TestClient

    from fusionlog.serving import create_app

    lines = bgl_log.read_text(encoding="utf-8").splitlines()
    with TestClient(create_app(load_scorer(bgl_artifact))) as client:
        assert "fusionlog_recent_flagged_share" not in client.get("/metrics").text  # no session yet
        verdicts = client.post("/v1/detect", json={"lines": lines[:600]}).json()["verdicts"]
        got = _samples(client.get("/metrics").text)
    flagged = sum(v["anomalous"] for v in verdicts)
    assert len(verdicts) == 30 and got["fusionlog_recent_flagged_share"] == pytest.approx(flagged / 30)
    assert 0 < got["fusionlog_pool_flagged_share"] <= 1
