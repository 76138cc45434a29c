"""Serving a real fused artifact: `detect` equals in-process scores; session-trained artifacts read raw lines."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from distill.finetune import FinetuneConfig
from distill.rounds import DistillConfig
from fusionlog.data import load_dataset
from fusionlog.detector import Detector
from fusionlog.pipeline import FuseConfig, fuse
from fusionlog.served import load_scorer


def _fuse(out, target, sources):
    cfg = FuseConfig(target=target, sources=sources, out=str(out), progress=False, epochs=2, steps_per_epoch=6,
                     distill=DistillConfig(rounds=0, finetune=FinetuneConfig(steps=5)))
    return fuse(cfg)


@pytest.fixture(scope="module")
def bgl_artifact(tmp_path_factory, cache_root):
    out = tmp_path_factory.mktemp("bgl-artifact")
    _fuse(out, "bgl", ("hdfs", "openstack"))
    return out


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
