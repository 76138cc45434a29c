"""Serving a real fused artifact: `detect` equals in-process scores; session-trained artifacts read raw lines;
the fast scoring path (one torch thread, length-sorted batches, score cache) equals the previous path."""

from __future__ import annotations

import dataclasses
import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionlog.data import load_dataset
from fusionlog.detector import Detector
from fusionlog.errors import ArtifactError
from fusionlog.model import encode_sessions, input_key, make_batch
from fusionlog.served import ArtifactScorer, load_scorer
from fusionlog.threads import torch_threads
from fusionlog.types import Session
from tests.conftest import small_fuse as _fuse


def test_detect_cli_matches_in_process_detector(bgl_artifact, data_dir):
    log = data_dir / "loghub2k/BGL/BGL_2k.log"
    proc = subprocess.run([sys.executable, "-m", "fusionlog.cli", "detect", "--model", str(bgl_artifact), str(log)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    verdicts = [json.loads(line) for line in proc.stdout.splitlines()]
    ds = load_dataset("bgl", data_dir, progress=False)
    expected = Detector.from_pretrained(bgl_artifact).decision_function(ds.sessions)
    assert [v["key"] for v in verdicts] == [s.key for s in ds.sessions]
    np.testing.assert_allclose([v["score"] for v in verdicts], expected, atol=1e-4)
    v = verdicts[0]
    assert v["top_templates"] and v["reason"].startswith("score ")
    assert isinstance(v["anomalous"], bool)
    # each verdict says why: the session's surprise and its largest terms, largest first, named in the reason
    stats = Detector.from_pretrained(bgl_artifact).stats_
    for v, s in zip(verdicts, ds.sessions, strict=True):
        assert v["surprise"] == pytest.approx(stats.surprise(s.event_ids, in_corpus=False), abs=1e-3)
        costs = [d["cost"] for d in v["departures"]]
        assert costs == sorted(costs, reverse=True) and sum(costs) <= v["surprise"] + 1e-2
        assert {d["kind"] for d in v["departures"]} <= {"has", "new", "lacks"}
    flagged = [v for v in verdicts if v["anomalous"]]
    assert flagged and all(v["departures"] for v in flagged)
    assert all(f"'{v['departures'][0]['template'][:60]}" in v["reason"] for v in flagged)
    # the closing digest: the commonest largest departure of the flagged sessions, with its count
    causes = Counter(f"{v['departures'][0]['kind']} '{v['departures'][0]['template']}'" for v in flagged)
    cause, n = causes.most_common(1)[0]
    assert f"anomalous sessions by their largest departure: {cause[:150]} {n}" in proc.stderr


def test_detect_reads_a_directory_of_rotated_logs_as_one_stream(bgl_artifact, data_dir, tmp_path):
    """Windows that a rotation cut in two (at lines 700 and 1400) are scored whole, as in the single file."""
    log = data_dir / "loghub2k/BGL/BGL_2k.log"
    lines = log.read_bytes().splitlines(keepends=True)
    folder = tmp_path / "bgl"
    folder.mkdir()
    with gzip.open(folder / "bgl.log.2.gz", "wb") as fh:
        fh.write(b"".join(lines[:700]))
    (folder / "bgl.log.1").write_bytes(b"".join(lines[700:1400]))
    (folder / "bgl.log").write_bytes(b"".join(lines[1400:]))

    def detect(*source: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fusionlog.cli", "-v", "detect", "--model", str(bgl_artifact),
                               *source], capture_output=True, text=True, timeout=300)

    whole, parts = detect(str(log)), detect(str(folder))
    assert whole.returncode == 0 and parts.returncode == 0, parts.stderr
    a = [json.loads(v) for v in whole.stdout.splitlines()]
    b = [json.loads(v) for v in parts.stdout.splitlines()]
    assert len(b) == 100 and [v["key"] for v in b] == [v["key"] for v in a]
    np.testing.assert_allclose([v["score"] for v in b], [v["score"] for v in a], atol=1e-6)
    assert "detect: 3 files, 2000 lines, 100 sessions" in parts.stderr
    listed = detect(str(folder / "bgl.log.2.gz"), str(folder / "bgl.log.1"), str(folder / "bgl.log"))
    assert [json.loads(v)["score"] for v in listed.stdout.splitlines()] == [v["score"] for v in b]
    follow = detect("--follow", "-")  # a folder is followed file by file (tests/test_multifollow.py); stdin is not
    assert follow.returncode == 2 and "--follow needs a FILE" in follow.stderr and "Traceback" not in follow.stderr
    (tmp_path / "st.json").write_text(json.dumps({"fusionlog_follow_state": 1, "followed": str(log)}), "utf-8")
    state = detect("--follow", str(folder), "--state", str(tmp_path / "st.json"))  # a one-file state, for a folder
    assert state.returncode == 2 and f"it is the state of {log}, not ['{folder}']" in state.stderr


def test_detect_into_a_reader_that_stops_early_exits_quietly(bgl_artifact, data_dir, tmp_path):
    """`fusionlog detect ... | head -1`: the reader closes the pipe; no traceback, the shell's SIGPIPE status."""
    log = tmp_path / "bgl_x5.log"  # ~5x a pipe's buffer of verdicts, so the writer is still writing at the close
    log.write_bytes((data_dir / "loghub2k/BGL/BGL_2k.log").read_bytes() * 5)
    proc = subprocess.Popen([sys.executable, "-m", "fusionlog.cli", "detect", "--model", str(bgl_artifact), str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert json.loads(first)["key"] and "Traceback" not in err and "BrokenPipe" not in err


def test_an_output_that_cannot_be_written_is_one_line_before_the_work_or_when_the_disk_fills(
        bgl_artifact, data_dir, tmp_path):
    """A folder that cannot be made (a file in the way) stops detect, fuse and eval before any work with the flag
    named; a disk that fills while verdicts are written (/dev/full) ends in one line naming it, status 2, no
    traceback."""
    log = data_dir / "loghub2k/BGL/BGL_2k.log"
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fusionlog.cli", *args], capture_output=True, text=True,
                              timeout=300)

    runs = {
        "--output": cli("detect", "--model", str(bgl_artifact), str(log), "-o", str(blocker / "v.jsonl")),
        "is a file, not a folder": cli("fuse", "--target", "bgl", "--rounds", "0", "--out", str(blocker)),
        "--out": cli("eval", "--target", "bgl", "--methods", "unseen-template", "--seeds", "1", "--out",
                     str(blocker / "e")),
    }
    for needle, proc in runs.items():
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert "prepare" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1  # before any work
    full = cli("detect", "--model", str(bgl_artifact), str(log), "-o", "/dev/full")
    assert full.returncode == 2 and "Traceback" not in full.stderr  # the output is named (stop 31)
    assert full.stderr.strip().splitlines()[-1] == ("fusionlog detect: error: /dev/full: cannot write the verdicts "
                                                    "(No space left on device)")


def test_session_trained_artifact_reads_raw_lines(tmp_path, data_dir, cache_root):
    """`openstack` is template sequences only; its artifact still scores raw Kalaki nova lines."""
    out = tmp_path / "os"
    _fuse(out, "openstack", ("hdfs", "bgl"))
    scorer = load_scorer(out)
    assert scorer.rule.kind == "key"
    log = data_dir / "openstack/kalaki_openstack_logs/openstack-nova-dhcpoff.log"
    from fusionlog.stream import StreamLimits, detect_stream, file_lines

    verdicts = list(detect_stream(scorer, file_lines(log), StreamLimits()))
    assert len(verdicts) == 199  # the file's instances (data README)
    stats = scorer.matcher.stats.to_dict()
    assert stats["matched"] + stats["cache_hits"] == stats["lines"]  # every instance line fits a known template
    assert scorer.matcher.n_known == 92
    assert all(v["score"] == pytest.approx(v["score"]) and v["top_templates"] for v in verdicts)
    # a line no template knows becomes a new template, embedded on the fly and scorable
    eid = scorer.event_id("hypervisor melted down completely on rack 7")
    assert eid >= 92 and scorer.new_templates_embedded == 1
    assert len(scorer.detector.vectors_) > 92
    scores, _ = scorer.score_sessions([[0, 1, eid]])
    assert np.isfinite(scores).all()


def test_artifact_reads_lines_with_its_systems_filter_and_prefix_cut(tmp_path, data_dir, cache_root):
    """`openstack-raw` cuts `[instance: <uuid>]` from the content and skips stack-trace lines before Drain;
    its artifact must read raw lines the same way, or no line matches a learned template."""
    from fusionlog.data.registry import dataset_info
    from fusionlog.stream import StreamLimits, detect_stream, file_lines

    out = tmp_path / "osraw"
    _fuse(out, "openstack-raw", ("hdfs", "bgl"))
    spec = dataset_info("openstack-raw").spec
    scorer = load_scorer(out)
    assert (scorer.line_filter, scorer.strip) == (spec.line_filter, spec.strip) != ("", "")
    log = data_dir / "openstack/kalaki_openstack_logs/openstack-nova-dhcpoff.log"
    verdicts = list(detect_stream(scorer, file_lines(log), StreamLimits()))
    assert len(verdicts) == 199  # the file's instances (data README)
    assert scorer.matcher.stats.new_lines == 0 and not any(v["new_templates"] for v in verdicts)
    serving = json.loads((out / "serving.json").read_text())
    (out / "serving.json").write_text(json.dumps({**serving, "strip": "("}))
    with pytest.raises(ArtifactError, match="serving.json"):
        load_scorer(out)


def test_a_named_log_format_trains_and_serves_as_its_format_string(tmp_path, data_dir, cache_root):
    """`--log-format Proxifier` is loghub's Proxifier format string and its HOST mask: the artifact keeps the
    string (a name would not compile at detection) and the mask, so `detect` reads the lines as training did."""
    from fusionlog.cli import main
    from fusionlog.data.named_formats import LOGHUB_FORMATS
    from fusionlog.stream import StreamLimits, detect_stream, file_lines

    log = data_dir / "loghub2k/Proxifier/Proxifier_2k.log"
    out = tmp_path / "px"
    assert main(["-q", "fuse", "--target", str(log), "--log-format", "Proxifier", "--window", "50", "--rounds", "0",
                 "--epochs", "1", "--steps-per-epoch", "4", "--sources", "hdfs", "bgl", "--out", str(out)]) == 0
    assert json.loads((out / "serving.json").read_text())["log_format"] == LOGHUB_FORMATS["Proxifier"]
    assert "HOST" in (out / "drain_state.json").read_text()
    scorer = load_scorer(out)
    verdicts = list(detect_stream(scorer, file_lines(log), StreamLimits()))
    assert len(verdicts) == 40 and scorer.matcher.stats.new_lines == 0
    assert scorer.matcher.n_known == 20  # masked hosts share templates (38 unmasked)


def test_a_json_lines_log_trains_and_serves(tmp_path, zookeeper_json, cache_root):
    """`--log-format json`: a structured logger's lines train a detector that `detect` reads the same way."""
    from fusionlog.cli import main
    from fusionlog.data.raw import RawFile, RawSpec
    from fusionlog.stream import StreamLimits, detect_stream, file_lines

    out = tmp_path / "zkjson"
    assert main(["-q", "fuse", "--target", str(zookeeper_json), "--log-format", "json", "--seconds", "60",
                 "--rounds", "0", "--epochs", "1", "--steps-per-epoch", "4", "--sources", "hdfs", "bgl",
                 "--out", str(out)]) == 0
    assert json.loads((out / "serving.json").read_text())["log_format"] == "json"
    spec = RawSpec(system="zk", files=(RawFile(str(zookeeper_json)),), log_format="json",
                   rule=load_scorer(out).rule)
    batch = load_dataset(str(zookeeper_json), spec=spec, progress=False)
    scorer = load_scorer(out)
    verdicts = list(detect_stream(scorer, file_lines(zookeeper_json), StreamLimits()))
    assert len(verdicts) == len(batch.sessions) > 1 and scorer.matcher.stats.new_lines == 0
    # over HTTP, a log shipper may post the records as objects: the same verdicts as the lines themselves
    from fastapi.testclient import TestClient

    from fusionlog.serving import create_app

    lines = zookeeper_json.read_text(encoding="utf-8").splitlines()[:300]
    with TestClient(create_app(load_scorer(out))) as client:
        as_text = client.post("/v1/detect", json={"lines": lines})
        as_objects = client.post("/v1/detect", json={"lines": [json.loads(x) for x in lines]})
    assert as_text.status_code == as_objects.status_code == 200, as_objects.text
    assert as_objects.json()["verdicts"] == as_text.json()["verdicts"] != []
    assert as_objects.json()["stats"]["unmatched_format"] == 0


def test_a_java_log_with_stack_traces_trains_and_serves(tmp_path, zookeeper_traces, cache_root):
    """A Java service's log with stack traces: the exception lines are templates of the trained model, and
    `detect` puts them in the same sessions as training did (no line unknown to the model)."""
    from fusionlog.cli import main
    from fusionlog.data.raw import RawFile, RawSpec
    from fusionlog.stream import StreamLimits, detect_stream, file_lines

    path, n_exceptions, _ = zookeeper_traces
    out = tmp_path / "zktraces"
    assert main(["-q", "fuse", "--target", str(path), "--log-format", "zookeeper", "--seconds", "60",
                 "--rounds", "0", "--epochs", "1", "--steps-per-epoch", "4", "--sources", "hdfs", "bgl",
                 "--out", str(out)]) == 0
    scorer = load_scorer(out)
    known = [scorer.template(i) for i in range(scorer.matcher.n_known)]
    assert "java.net.ConnectException: Connection refused" in known
    spec = RawSpec(system="zk", files=(RawFile(str(path)),), log_format=json.loads(
        (out / "serving.json").read_text())["log_format"], rule=scorer.rule)
    batch = load_dataset(str(path), spec=spec, progress=False)
    verdicts = list(detect_stream(scorer, file_lines(path), StreamLimits()))
    assert scorer.matcher.stats.new_lines == 0
    served = sorted((v["key"], v["events"]) for v in verdicts)
    assert served == sorted((s.key, len(s.event_ids)) for s in batch.sessions)
    assert sum(v["events"] for v in verdicts) == 2000 + n_exceptions


def test_serve_command_answers_over_http_and_a_missing_model_is_one_line(bgl_artifact, data_dir, tmp_path):
    """`fusionlog serve` (and scripts/serve.py, the same command) as a user starts it: any free port, real HTTP."""
    import re
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "fusionlog.cli", "serve", "--model", str(bgl_artifact),
                             "--port", "0", "--no-access-log"], stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:  # uvicorn names the port it bound
            m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "the server never said where it listens"
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=60) as r:
            health = json.load(r)
        assert health["status"] == "ok" and health["rule"]["kind"] == "lines"
        lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:40]
        req = urllib.request.Request(f"{base}/v1/detect", data=json.dumps({"lines": lines}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.load(r)
        assert len(body["verdicts"]) == 2 and body["stats"]["lines"] == 40  # two 20-line windows
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    serve_py = Path(__file__).resolve().parents[1] / "scripts" / "serve.py"
    script = subprocess.run([sys.executable, str(serve_py), "--model", str(tmp_path / "absent")],
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 2 and script.stderr.strip().count("\n") == 0 and "absent" in script.stderr


def test_served_check_reads_spark_back_as_training_parsed_it(tmp_path, data_dir, cache_root):
    """`python -m eval.served_check`: Spark's `hdfs://<:IP:><:PATH:>` lines reach the served model as the
    templates training learned (matched only once masked as Drain3 masks), so scores equal the batch's."""
    from eval.served_check import check_one

    r = check_one("spark-2k", tmp_path / "spark", data_dir)
    assert r["same_keys"] and r["batch_sessions"] == 100
    assert r["new_template_lines"] == 0 and r["masked_matches"] > 0
    assert r["max_score_diff"] < 1e-4


def test_verdicts_can_carry_the_raw_line_behind_each_top_template(bgl_artifact, data_dir):
    """`detect --examples`: each top template comes with the session's first raw line of it, which reads
    back to the same template and lies inside the session's line range."""
    from fusionlog.stream import (
        MAX_EXAMPLE_CHARS,
        StreamLimits,
        detect_stream,
        file_lines,
        scorer_parser,
        scorer_sessionizer,
    )

    scorer = load_scorer(bgl_artifact)
    log = data_dir / "loghub2k/BGL/BGL_2k.log"
    limits = StreamLimits(idle_seconds=None)
    plain = list(detect_stream(scorer, file_lines(log), limits))
    shown = list(detect_stream(scorer, file_lines(log), limits,
                               sessionizer=scorer_sessionizer(scorer, limits, examples=True)))
    assert [v["score"] for v in shown] == [v["score"] for v in plain]
    assert not any("example" in t for v in plain for t in v["top_templates"])
    parser = scorer_parser(scorer)
    assert not any("example" in d for v in plain for d in v["departures"])
    assert any(d["kind"] != "lacks" for v in shown for d in v["departures"])
    for v in shown:
        assert all(("example" in d) == (d["kind"] != "lacks") for d in v["departures"])
        for t in [*v["top_templates"], *(d for d in v["departures"] if d["kind"] != "lacks")]:
            ex = t["example"]
            assert v["first_line"] <= ex["line"] <= v["last_line"]
            if len(ex["text"]) < MAX_EXAMPLE_CHARS:  # a longer line is shown cut, and reads as another template
                assert scorer.event_id(parser.parse(ex["text"])[0]) == t["event_id"]


def test_the_service_names_an_exception_the_detector_never_saw_as_why(bgl_artifact, data_dir):
    """A Java trace under a BGL line, over HTTP: the verdict's first departure is the exception line (a template
    the detector never saw costs one whole unit), with the request's line it came from."""
    from fastapi.testclient import TestClient

    from fusionlog.serving import create_app

    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:20]
    trace = "java.io.IOException: Connection reset by peer"
    with TestClient(create_app(load_scorer(bgl_artifact))) as client:
        plain = client.post("/v1/detect", json={"lines": lines}).json()["verdicts"][0]
        v = client.post("/v1/detect", json={"lines": [*lines[:5], trace, *lines[5:]], "examples": True}).json()
    v = v["verdicts"][0]
    first = v["departures"][0]
    assert (first["template"], first["kind"], first["cost"], first["example"]["line"]) == (trace, "new", 1.0, 6)
    assert v["surprise"] == pytest.approx(plain["surprise"] + 1.0, abs=2e-3) and v["score"] > plain["score"]
    assert f"has new '{trace}' (1.00)" in v["reason"]


def test_loading_and_scoring_an_artifact_needs_no_llm_router_or_training_code(bgl_artifact):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        top = name.split('.')[0]\n"
        "        if top in ('vllm', 'peft', 'distill', 'router', 'faiss') or name.startswith('fusionlog.training'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from fusionlog.served import load_scorer\n"
        f"s = load_scorer({str(bgl_artifact)!r})\n"
        "ids = [s.event_id('instruction cache parity error corrected') for _ in range(5)]\n"
        "v = s.verdicts(['k'], [ids])[0]\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('vllm', 'peft', 'distill', 'router', 'faiss')]\n"
        "print(bad, v.events, type(v.score).__name__)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] 5 float"


# -- the fast scoring path (issue 7) -----------------------------------------------------------------


def _previous_path(scorer: ArtifactScorer, sessions: list[list[int]], threads: int | None = None):
    """The scorer's path before issue 7: every call encodes all sessions and runs them in input order."""
    det = scorer.detector
    objs = [Session(det.system_, str(i), list(ids)) for i, ids in enumerate(sessions)]
    enc = encode_sessions(objs, det.stats_, det.model_.config.max_len, in_corpus=False, system=det.system_)
    scores = np.empty(len(enc), np.float32)
    attn: list[np.ndarray] = [np.zeros(0, np.float32)] * len(enc)
    with torch.no_grad(), torch_threads(threads):
        for start in range(0, len(enc), det.score_batch_size):
            groups = list(range(start, min(start + det.score_batch_size, len(enc))))
            b = make_batch(enc, groups, det._vectors_t)
            out = det.model_(b.x, b.mask, b.session_features)
            scores[groups] = out.logits.float().numpy()
            w = out.attention.float().numpy()
            for row, g in enumerate(groups):
                attn[g] = w[row, : len(enc.ids[g])]
    return scores[enc.index], [attn[g] for g in enc.index]


def _mixed_sessions(data_dir, n_templates: int) -> list[list[int]]:
    """BGL's real windows, long random ones (past max_len, with unknown ids) and repeats of both."""
    real = [s.event_ids for s in load_dataset("bgl", data_dir, progress=False).sessions]
    rng = np.random.default_rng(0)
    synthetic = [[int(e) for e in rng.integers(-1, n_templates, size=int(k))] for k in rng.integers(1, 150, size=40)]
    return real + synthetic + real[:15] + synthetic[:5]


def test_fast_cached_scores_equal_the_previous_path(bgl_artifact, data_dir):
    scorer = load_scorer(bgl_artifact)
    sessions = _mixed_sessions(data_dir, len(scorer.detector.vectors_))
    threads = torch.get_num_threads()
    ref_scores, ref_attn = _previous_path(scorer, sessions)
    scores, attn = scorer.score_sessions(sessions)
    assert torch.get_num_threads() == threads  # the scorer's one-thread setting is scoped to the call
    assert np.abs(scores - ref_scores).max() < 1e-4
    assert all(a.shape == r.shape and np.abs(a - r).max() < 1e-4 for a, r in zip(attn, ref_attn, strict=True))
    # what the cache keys on is what encode_sessions groups by (all of these are unlabelled)
    distinct = {input_key(ids, scorer.detector.model_.config.max_len) for ids in sessions}
    assert scorer.cache.misses == len(distinct) == len(scorer.cache)
    assert scorer.cache.hits == len(sessions) - len(distinct)
    hits = scorer.cache.hits
    again, attn_again = scorer.score_sessions(sessions)  # every session from the cache, bit for bit
    assert scorer.cache.hits == hits + len(sessions) and scorer.cache.misses == len(distinct)
    np.testing.assert_array_equal(again, scores)
    assert all(np.array_equal(a, b) for a, b in zip(attn_again, attn, strict=True))
    # no cache and torch's own thread count: the same scores
    plain = ArtifactScorer(bgl_artifact, threads=None, cache_size=0)
    assert np.abs(plain.score_sessions(sessions)[0] - ref_scores).max() < 1e-4
    assert len(plain.cache) == 0


def test_a_repeated_session_hits_the_cache_with_the_identical_verdict(bgl_artifact, data_dir):
    scorer = load_scorer(bgl_artifact)
    ids = load_dataset("bgl", data_dir, progress=False).sessions[3].event_ids
    first = scorer.verdicts(["w3"], [ids])[0]
    hits, misses = scorer.cache.hits, scorer.cache.misses
    second = scorer.verdicts(["w3"], [ids])[0]
    assert (scorer.cache.hits, scorer.cache.misses) == (hits + 1, misses)
    assert second.to_dict() == first.to_dict()


def test_a_widened_template_is_rescored_not_served_stale(bgl_artifact, embedder):
    scorer = ArtifactScorer(bgl_artifact, embedder=embedder)
    # unbounded deep path: the default bound (0.01) saturates, and the score must read the vector row here
    # an unbounded deep path with a live last layer: at the default bound (0.01) the GRU's share of the
    # score saturates, and the score must read the vector row for staleness to show
    model = scorer.detector.model_
    model.config = dataclasses.replace(model.config, deep_bound=0.0)
    with torch.no_grad():
        model.head[-1].weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    old_only = [0, 1, 2]
    scorer.score_sessions([old_only])
    eid = scorer.event_id("fan tray alpha overheated badly near rack")
    assert eid >= scorer.matcher.n_known and scorer.new_templates_embedded == 1
    session = [0, eid, 1]
    stale = float(scorer.score_sessions([session])[0][0])
    # a second line widens the template ("fan tray <*> ..."): same id, its vector row is re-embedded
    assert scorer.event_id("fan tray beta overheated badly near rack") == eid
    assert scorer.new_templates_embedded == 2 and "<" in scorer.template(eid)
    misses = scorer.cache.misses
    fresh = float(scorer.score_sessions([session])[0][0])
    assert scorer.cache.misses == misses + 1  # not a hit on the entry that read the old row
    expected = float(_previous_path(scorer, [session], threads=scorer.threads)[0][0])
    assert fresh == pytest.approx(expected, abs=1e-7)
    assert expected != pytest.approx(stale, abs=1e-7)  # the old entry would have been wrong
    hits = scorer.cache.hits
    scorer.score_sessions([old_only])  # artifact templates only: rows never change, the entry stays valid
    assert scorer.cache.hits == hits + 1


def test_service_exports_score_cache_counters(bgl_artifact):
    from fastapi.testclient import TestClient

    from fusionlog.serving import create_app

    body = {"sessions": [{"key": "a", "templates": [0, 1, 2]}, {"key": "b", "templates": [0, 1, 2]}]}
    with TestClient(create_app(load_scorer(bgl_artifact))) as c:
        first = c.post("/v1/detect", json=body).json()["verdicts"]
        second = c.post("/v1/detect", json=body).json()["verdicts"]
        text = c.get("/metrics").text
    assert first == second
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    # request 1: one miss, and its in-request repeat a hit; request 2: two hits
    assert float(samples["fusionlog_score_cache_misses_total"]) == 1
    assert float(samples["fusionlog_score_cache_hits_total"]) == 3
    assert float(samples["fusionlog_score_cache_entries"]) == 1


def test_every_file_of_an_artifact_is_readable_by_the_user_a_service_runs_as(bgl_artifact):
    """Temp-then-rename writes made every file 0600 (mkstemp; safetensors too), so an artifact trained by one
    user could not be served by another (a service account, a container's user). Files now get the mode
    `open()` gives under the process umask."""
    import os

    from fusionlog.io import _umask

    expected = 0o666 & ~_umask()
    files = [p for p in Path(bgl_artifact).rglob("*") if p.is_file()]
    assert {"model.safetensors", "config.json", "vectors.npy", "templates.json"} <= {p.name for p in files}
    wrong = {str(p.relative_to(bgl_artifact)): oct(p.stat().st_mode & 0o777) for p in files
             if p.stat().st_mode & 0o777 != expected}
    assert not wrong, f"expected {oct(expected)}: {wrong}"
    assert os.access(Path(bgl_artifact) / "config.json", os.R_OK)


def test_a_folder_another_library_wrote_gets_the_modes_open_and_mkdir_give(tmp_path):
    """safetensors' save_file (peft's adapters) and mkdtemp (a converted LLM in a shared cache) leave 0600 files in
    a 0700 folder; `publish_tree` gives them what `open()` and `mkdir()` would."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    from fusionlog.io import _umask, publish_tree

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "sub").mkdir(mode=0o700)
    save_file({"w": torch.zeros(2)}, str(folder / "sub" / "adapter_model.safetensors"))
    assert (folder / "sub" / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o600
    publish_tree(folder)
    umask = _umask()
    assert folder.stat().st_mode & 0o777 == (folder / "sub").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (folder / "sub" / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def _new_threshold(folder: Path, value: float) -> None:
    """What a re-`fuse` into the folder changes, in the smallest form: the decision threshold."""
    info = json.loads((folder / "threshold.json").read_text(encoding="utf-8"))
    info["value"] = value
    (folder / "threshold.json").write_text(json.dumps(info), encoding="utf-8")


def test_the_service_reloads_its_model_folder_without_a_restart(bgl_artifact, data_dir, tmp_path):
    """After a re-fuse the operator posts /v1/reload (or sends SIGHUP): the folder is loaded again while requests
    are served; open ingest sessions are scored with the model that cut them; a broken folder is refused and the
    loaded model keeps serving."""
    import shutil

    from fastapi.testclient import TestClient

    from fusionlog.ingest import IngestConfig
    from fusionlog.serving import create_app

    art = shutil.copytree(bgl_artifact, tmp_path / "det")
    lines = (data_dir / "loghub2k/BGL/BGL_2k.log").read_text(encoding="utf-8").splitlines()[:400]
    quiet = IngestConfig(idle_seconds=None, wall_idle_seconds=None)
    with TestClient(create_app(load_scorer(art), ingest=quiet)) as client:
        before = client.post("/v1/detect", json={"lines": lines}).json()["verdicts"]
        assert any(v["anomalous"] for v in before)
        assert len(client.post("/v1/ingest", json={"lines": lines[:30]}).json()["verdicts"]) == 1  # one open
        high = max(v["score"] for v in before) + 1.0
        _new_threshold(art, high)
        assert client.post("/v1/detect", json={"lines": lines}).json()["verdicts"] == before  # not yet
        r = client.post("/v1/reload")
        assert r.status_code == 200, r.text
        assert r.json()["flushed_sessions"] == 1 and r.json()["threshold"] == pytest.approx(high)
        health = client.get("/healthz").json()
        assert health["threshold"] == pytest.approx(high) and health["ingest"]["open_sessions"] == 0
        after = client.post("/v1/detect", json={"lines": lines}).json()["verdicts"]
        assert [v["score"] for v in after] == [v["score"] for v in before] and not any(v["anomalous"] for v in after)
        # broken files fail in whatever reads them (safetensors, a JSON reader): each is the folder's fault, a 422
        good = (art / "threshold.json").read_text(encoding="utf-8")
        (art / "threshold.json").write_text("[1, 2]", encoding="utf-8")
        r = client.post("/v1/reload")
        assert r.status_code == 422 and "does not load" in r.json()["detail"], r.text
        (art / "threshold.json").write_text(good, encoding="utf-8")
        weights = art / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])  # cut mid-copy
        r = client.post("/v1/reload")
        assert r.status_code == 422 and "does not load" in r.json()["detail"], r.text
        (art / "config.json").unlink()  # a folder caught mid-copy
        r = client.post("/v1/reload")
        assert r.status_code == 422 and "config.json" in r.json()["detail"]
        assert client.post("/v1/detect", json={"lines": lines}).json()["verdicts"] == after


def test_sighup_reloads_a_running_serve(bgl_artifact, tmp_path):
    import re
    import shutil
    import signal
    import time
    import urllib.request

    art = shutil.copytree(bgl_artifact, tmp_path / "det")
    proc = subprocess.Popen([sys.executable, "-m", "fusionlog.cli", "serve", "--model", str(art), "--port", "0",
                             "--no-access-log"], stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:
            if m := re.search(r"running on http://127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
                break
        assert port

        def threshold() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=60) as r:
                return json.load(r)["threshold"]

        old = threshold()
        _new_threshold(art, old + 0.25)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while threshold() == old and time.monotonic() < deadline:
            time.sleep(0.1)
        assert threshold() == pytest.approx(old + 0.25) and proc.poll() is None  # reloaded, still running
    finally:
        proc.terminate()
        proc.wait(timeout=60)
