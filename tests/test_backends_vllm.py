"""The vLLM adapter cannot run here (no GPU, no vllm): check how it maps our settings, and that it is
the only module importing vllm."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from distill.backends.base import ScoreParams
from distill.backends.vllm_offline import PINNED_VLLM, VLLMConfig, build_sampling_kwargs, guided_choice
from fusionlog.errors import ConfigError, LLMError

REPO = Path(__file__).resolve().parents[1]


def test_sampling_mapping():
    assert build_sampling_kwargs(ScoreParams()) == {"temperature": 0.0, "max_tokens": 4, "logprobs": 10}
    assert build_sampling_kwargs(ScoreParams(reason_tokens=20, top_logprobs=5))["max_tokens"] == 24
    assert guided_choice(ScoreParams()) == ["normal", "anomalous"]
    assert guided_choice(ScoreParams(reason_tokens=8)) is None
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.\d+)?", PINNED_VLLM)


def test_config_validation():
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        VLLMConfig("m", gpu_memory_utilization=1.5)


def test_only_one_module_imports_vllm():
    importers = [
        p.relative_to(REPO).as_posix()
        for folder in ("distill", "fusionlog", "router", "eval", "scripts")
        for p in (REPO / folder).rglob("*.py")
        if re.search(r"^\s*(import vllm|from vllm)", p.read_text(encoding="utf-8"), re.M)
    ]
    assert importers == ["distill/backends/vllm_offline.py"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_is_a_clear_error():
    from distill.backends.vllm_offline import VLLMBackend

    with pytest.raises(LLMError, match=f"vllm=={PINNED_VLLM}"):
        VLLMBackend(VLLMConfig("Qwen/Qwen2.5-7B-Instruct"))
