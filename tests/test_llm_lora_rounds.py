"""`--llm-lora`: LoRA on the LLM between distillation rounds, from labels the small model and the LLM agree on.

The training loop itself is tested on a tiny random model in tests/test_distill_tiny.py. The slow test
here uses real components: real BGL/HDFS/OpenStack sessions, the real general path, and
SmolLM2-135M from its PyPI wheel (which does not separate the classes: it checks the
mechanics -- adapter written, loaded next round, cache identity, resume -- not label quality).
"""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest

from distill.config import RoundLoraConfig
from distill.finetune import FinetuneConfig
from distill.rounds import STATE_NAME, DistillConfig, LLMVerdict, agreed_labels
from fusionlog.errors import ConfigError
from fusionlog.pipeline import FuseConfig, balance_from_sources, fuse
from fusionlog.types import Session

#: The smallest LoRA that still trains: one optimizer step over two examples (one agreed + one source).
TINY_LORA = RoundLoraConfig(rank=2, alpha=4, epochs=1, max_steps=1, grad_accum=2, lr=2e-3, confident=0.5,
                            min_agreed=1, max_agreed=1)


def _cfg(out, **kw) -> FuseConfig:
    # a fine-tune strong enough that the small model takes on the LLM's confident verdicts, so the
    # agreement the adapter trains on exists from round 1 on (this test checks mechanics, not quality)
    distill = DistillConfig(rounds=kw.pop("rounds", 2), calls_per_round=kw.pop("calls", 3), max_rechecks=2,
                            probe_per_class=0, finetune=FinetuneConfig(steps=30, lr=2e-3), lora=TINY_LORA)
    return FuseConfig(target="bgl", sources=("hdfs", "openstack"), out=str(out), progress=False, distill=distill,
                      k_examples=0, epochs=2, steps_per_epoch=6, llm="smollm2-135m", llm_lora=True, **kw)


def test_llm_lora_needs_a_backend_that_takes_an_adapter(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--llm-lora.*openai"):
        FuseConfig(target="bgl", llm_backend="openai", llm_lora=True)
    with pytest.raises(ConfigError, match="--llm-lora.*vllm"):
        FuseConfig(target="bgl", llm="qwen2.5-7b", llm_lora=True)  # auto -> vllm for a GPU-only alias
    FuseConfig(target="bgl", llm_backend="openai")  # without the flag openai stays fine
    from fusionlog.cli import main

    assert main(["fuse", "--target", "bgl", "--llm-backend", "openai", "--llm-lora", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--llm-lora" in err[0]
    assert not (tmp_path / "rounds").exists()  # refused before any work


def test_agreed_labels_are_confident_agreements_most_confident_first():
    pool = [Session("x", f"s{i}", ev) for i, ev in enumerate([[1], [1], [2], [3], [4], [5]])]
    seqs = [tuple(s.event_ids) for s in pool]
    p = np.array([0.95, 0.85, 0.02, 0.6, 0.99, 0.1])
    llm = {(1,): LLMVerdict(0.8, 1), (2,): LLMVerdict(0.3, 0), (3,): LLMVerdict(0.9, 1), (4,): LLMVerdict(0.2, 0)}
    got = agreed_labels(pool, seqs, p, llm, RoundLoraConfig(confident=0.8, min_agreed=1))
    # (1,): mean 0.9 agrees; (2,): 0.02 agrees (normal); (3,): 0.6 not confident; (4,): disagrees; (5,): no LLM verdict
    assert [(a.session.key, a.label, a.small_prob) for a in got] == [("s2", 0, 0.02), ("s0", 1, 0.9)]
    assert len(agreed_labels(pool, seqs, p, llm, RoundLoraConfig(confident=0.8, min_agreed=1, max_agreed=1))) == 1


def test_sources_top_up_the_rarer_class_with_distinct_sequences():
    from fusionlog.detector import SystemSessions

    sessions = [Session("a", f"k{i}", [i % 3], label=int(i % 3 == 0)) for i in range(12)]
    src = SystemSessions("a", "a", np.zeros((3, 4), np.float32), sessions, ["t0", "t1", "t2"])
    extra = balance_from_sources([src], [0, 3], seed=0)  # 3 agreed anomalous, 0 normal
    assert len(extra) == 2 and all(s.label == 0 for s, _ in extra)  # only 2 distinct normal sequences exist
    assert len({tuple(s.event_ids) for s, _ in extra}) == 2
    assert balance_from_sources([src], [2, 2]) == []


@pytest.mark.slow
def test_two_rounds_with_llm_lora_train_save_and_load_the_adapter(tmp_path, cache_root, monkeypatch):
    from distill.lora import ADAPTER_META_NAME
    from fusionlog.pipeline import LazyLabeller

    out, cache = tmp_path / "run", tmp_path / "v.sqlite"
    result = fuse(_cfg(out), cache_path=cache)
    report = json.loads((out / "report.json").read_text())
    r1, r2 = report["rounds"][1]["llm_lora"], report["rounds"][2]["llm_lora"]
    assert report["rounds"][0]["llm_lora"] is None
    # round 1 labelled with the base model, then trained the adapter the next round uses
    assert r1["labelled_with"] is None and r1["skipped"] is None, r1
    assert r1["adapter"] == "rounds/round_1/llm_adapter" and r1["agreed"] >= 1
    assert r1["examples"] >= r1["agreed"] and r1["steps"] >= 1 and r1["passes"] >= 1
    assert r1["loss_after"] < r1["loss_before"]
    adapter = out / "rounds" / "round_1" / "llm_adapter"
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", ADAPTER_META_NAME} <= names
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in adapter.iterdir()} == dict.fromkeys(names, 0o666 & ~umask)
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    meta = json.loads((adapter / ADAPTER_META_NAME).read_text())
    assert meta["kind"] == "round" and meta["examples"] == r1["examples"] and meta["target_system"] == "bgl"
    assert r2["labelled_with"] == "rounds/round_1/llm_adapter"
    assert report["llm_lora"]["final_adapter"] == (r2["adapter"] or r1["adapter"])
    state = json.loads((out / "rounds" / "round_2" / STATE_NAME).read_text())
    assert state["llm_adapter"] == report["llm_lora"]["final_adapter"]

    # round 2's calls ran on base + round 1's adapter: a different cache identity from the base model
    from distill.backends.transformers_local import TransformersBackend

    tuned_id = TransformersBackend("smollm2-135m", adapter=adapter).model_id
    with sqlite3.connect(cache) as db:
        models = {m for (m,) in db.execute("SELECT DISTINCT model FROM answers")}
    base_ids = {m for m in models if "+lora:" not in m}
    assert len(base_ids) == 1 and tuned_id in models and tuned_id.startswith(next(iter(base_ids)) + "+lora:")
    assert report["rounds"][2]["llm_calls"] > 0

    # --resume reloads the last round's adapter (no new round here: only the hand-over is checked)
    used = []
    original = LazyLabeller.use
    monkeypatch.setattr(LazyLabeller, "use", lambda self, a: (used.append(a), original(self, a))[1])
    again = fuse(_cfg(out, resume=True), cache_path=cache)
    assert again.report["resumed"] is True and used == [out / report["llm_lora"]["final_adapter"]]
    assert again.report["rounds"] == report["rounds"]
    assert result.detector is not None
