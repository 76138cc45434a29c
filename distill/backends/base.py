"""The one interface every LLM backend implements, and the plain types that cross it.

Why one interface: the labeller, the cache and the tests must not care whether a verdict came from a
local CPU model, a vLLM engine or an HTTP server. A backend takes rendered chat messages and returns,
per prompt, P(anomalous), the label, a short reason and token counts. Backends never raise on one
bad answer: they return an `LLMResult` with `error` set, and the labeller retries, then abstains.
`LLMError` is raised only when the backend cannot start (weights missing, server unreachable).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

#: A rendered prompt: OpenAI-style chat messages, e.g. [{"role": "system", "content": "..."}, ...].
Messages = list[dict[str, str]]

#: The two answers every backend chooses between, in label order (index = label).
LABEL_WORDS: tuple[str, str] = ("normal", "anomalous")


@dataclass
class LLMResult:
    """One backend answer. `p_anomalous is None` means no usable answer (see `error`)."""

    p_anomalous: float | None
    label: int | None
    reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    text: str = ""  # raw text when the backend generated any (for debugging malformed output)
    error: str = ""  # why there is no answer: "malformed", "timeout", "http 500", ...
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.p_anomalous is not None and self.label is not None and not self.error

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LLMResult:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class ScoreParams:
    """How to ask: settings every backend maps onto its own API (documented per backend)."""

    reason_tokens: int = 0  # 0: label only (cheapest); >0: also generate a short reason
    temperature: float = 0.0
    top_logprobs: int = 10  # HTTP/vLLM: how many alternatives to read P(anomalous) from


@runtime_checkable
class LLMBackend(Protocol):
    """name: backend kind ("transformers", "vllm", "openai"); model_id: stable identity for cache keys."""

    name: str
    model_id: str

    def score(self, prompts: Sequence[Messages], params: ScoreParams) -> list[LLMResult]:
        """One result per prompt, same order. Never raises for a single bad answer."""
        ...

    def close(self) -> None:
        ...


def softmax2(lp_normal: float, lp_anomalous: float) -> float:
    """P(anomalous) from the two options' log-likelihoods, numerically safe."""
    m = max(lp_normal, lp_anomalous)
    a = math.exp(lp_anomalous - m)
    n = math.exp(lp_normal - m)
    return a / (a + n)


def p_from_top_logprobs(top: dict[str, float]) -> float | None:
    """P(anomalous) from the first answer token's alternatives (HTTP and vLLM backends).

    Each alternative token is stripped and lower-cased; one that starts one of the label words
    ("an" for anomalous, "norm" for normal; "ab" counts as anomalous for "abnormal") adds its
    probability to that class. None when neither class appears among the alternatives.
    """
    mass = [0.0, 0.0]
    for token, lp in top.items():
        t = token.strip().lower().lstrip("\"'`*[({")
        cls = _token_class(t)
        if cls is not None:
            mass[cls] += math.exp(lp)
    total = mass[0] + mass[1]
    if total <= 0.0:
        return None
    return mass[1] / total


def _token_class(t: str) -> int | None:
    """Which label word a first answer token starts. Too-short prefixes are refused: "no" (as in
    "No, it is fine") must not count as "normal", nor a lone "a" as "anomalous"; "an"/"An" must,
    because Qwen's tokenizer splits "anomalous" as "an" + "omal" + "ous"."""
    if t.startswith("normal") or (len(t) >= 3 and "normal".startswith(t)):
        return 0
    if t.startswith(("anomal", "abnormal")) or (len(t) >= 2 and ("anomalous".startswith(t) or
                                                                    "abnormal".startswith(t))):
        return 1
    return None
