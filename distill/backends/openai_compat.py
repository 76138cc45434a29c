"""OpenAI-compatible HTTP backend: `vllm serve`, llama.cpp's server, or any /v1/chat/completions.

How our settings map onto the API: temperature → `temperature`; we ask for a few tokens
(`max_tokens` = 4 for the label word, plus `reason_tokens`), and `logprobs: true` with
`top_logprobs`, so P(anomalous) comes from the first answer token's alternatives. A server that
returns no logprobs still works: the label is parsed from the text and the probability is 1 or 0
(marked `p_source: text`). `extra_body` is merged into each request as-is, e.g.
`{"guided_choice": ["normal", "anomalous"]}` for a vLLM server's constrained decoding.

Reliability: per-request timeout; retries with exponential backoff on connection errors, timeouts,
429 and 5xx; other 4xx answers are not retried. A concurrency limit bounds requests in flight.
Unreachable at start-up (`check`) is an LLMError; a failure during the run becomes an error result
(and so, after the labeller's retries, an abstention).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from distill.backends.base import LLMResult, Messages, ScoreParams, p_from_top_logprobs
from distill.verdicts import parse_answer
from fusionlog.errors import ConfigError, LLMError

logger = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""  # model name the server serves; defaults to the resolved alias hub id
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key (never the key itself)
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 0.5  # first wait; doubles each retry
    concurrency: int = 4
    extra_body: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"OpenAIConfig.base_url={self.base_url!r}: must start with http:// or https://")
        if self.timeout_s <= 0:
            raise ConfigError(f"OpenAIConfig.timeout_s={self.timeout_s}: must be > 0")
        if self.max_retries < 0:
            raise ConfigError(f"OpenAIConfig.max_retries={self.max_retries}: must be >= 0")
        if self.concurrency < 1:
            raise ConfigError(f"OpenAIConfig.concurrency={self.concurrency}: must be >= 1")


class OpenAIBackend:
    name = "openai"

    def __init__(self, config: OpenAIConfig, check: bool = True) -> None:
        if not config.model:
            raise ConfigError("OpenAIConfig.model: give the model name the server serves")
        self.config = config
        self.model_id = f"{config.model}@{config.base_url}"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(config.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(base_url=config.base_url.rstrip("/"), headers=headers,
                                    timeout=httpx.Timeout(config.timeout_s))
        self.requests = 0
        self.retries = 0
        if check:
            self.check()

    def check(self) -> None:
        """Fail fast, once, when the server is not there (the only place this backend raises)."""
        try:
            resp = self._client.get("/models")
        except httpx.HTTPError as exc:
            raise LLMError(f"openai backend: cannot reach {self.config.base_url}: {exc}") from exc
        if resp.status_code >= 400:
            raise LLMError(f"openai backend: {self.config.base_url}/models answered HTTP {resp.status_code}")

    def score(self, prompts: Sequence[Messages], params: ScoreParams | None = None) -> list[LLMResult]:
        params = params or ScoreParams()
        if len(prompts) <= 1 or self.config.concurrency == 1:
            return [self._score_one(m, params) for m in prompts]
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(prompts))) as pool:
            return list(pool.map(lambda m: self._score_one(m, params), prompts))

    def request_body(self, messages: Messages, params: ScoreParams) -> dict:
        body = {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": 4 + max(0, params.reason_tokens),
            "temperature": params.temperature,
            "logprobs": True,
            "top_logprobs": params.top_logprobs,
        }
        body.update(self.config.extra_body)
        return body

    def _score_one(self, messages: Messages, params: ScoreParams) -> LLMResult:
        body = self.request_body(messages, params)
        data, error = self._post_with_retries(body)
        if data is None:
            return LLMResult(None, None, error=error)
        return result_from_response(data)

    def _post_with_retries(self, body: dict) -> tuple[dict | None, str]:
        wait = self.config.backoff_s
        error = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.retries += 1
                time.sleep(wait)
                wait *= 2
            self.requests += 1
            try:
                resp = self._client.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                error = "timeout"
                continue
            except httpx.HTTPError as exc:
                error = f"connection: {type(exc).__name__}"
                continue
            if resp.status_code in _RETRY_STATUS:
                error = f"http {resp.status_code}"
                continue
            if resp.status_code >= 400:
                return None, f"http {resp.status_code}: {resp.text[:200]}"
            try:
                return resp.json(), ""
            except ValueError:
                error = "invalid json"
        return None, error

    def close(self) -> None:
        self._client.close()


def result_from_response(data: dict) -> LLMResult:
    """Label from the text, probability from the first token's top logprobs (when present)."""
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        return LLMResult(None, None, error="malformed response")
    usage = data.get("usage") or {}
    pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    parsed = parse_answer(text)
    if parsed is None:
        return LLMResult(None, None, text=text[:500], prompt_tokens=pt, completion_tokens=ct, error="malformed")
    p = _p_from_logprobs(choice.get("logprobs"))
    source = "logprobs"
    if p is None:
        p, source = (parsed.prob if parsed.prob is not None else float(parsed.label)), "text"
    # the label follows the text the model wrote; p is the model's own belief over the two words
    return LLMResult(p, parsed.label, parsed.reason, pt, ct, text=text[:500], extra={"p_source": source})


def _p_from_logprobs(logprobs: dict | None) -> float | None:
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content") or []
    for entry in content:  # skip leading whitespace / markup tokens to the first word token
        token = str(entry.get("token", ""))
        if not token.strip(" \n\t*\"'`"):
            continue
        top = {str(t.get("token", "")): float(t.get("logprob", -1e9)) for t in entry.get("top_logprobs") or []}
        top.setdefault(token, float(entry.get("logprob", -1e9)))
        return p_from_top_logprobs(top)
    return None
