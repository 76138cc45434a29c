"""vLLM offline backend (`vllm.LLM`), for GPU machines. The only module that imports vllm.

Written against the documented API of vllm==0.10.1.1 (pin it: the guided-decoding API moved in
later releases, and this file is where that churn lands). It has not been run here: this machine
and CI have no GPU, and the GPU machine we can borrow has no network and cannot carry a vLLM wheel.
`build_sampling_kwargs` (pure Python, tested) is how our settings map onto vLLM's:

- `GuidedDecodingParams(choice=["normal", "anomalous"])` constrains the answer to the two words
  when no reason is asked for (with `reason_tokens > 0` we let it write and parse the text);
- `logprobs=top_logprobs` returns the first answer token's alternatives; vLLM 0.10's default
  `logprobs_mode="raw_logprobs"` reports them before the guide masks the vocabulary, so P(anomalous)
  is the model's own belief, as in the transformers backend;
- `temperature`, `max_tokens` map one to one; chat templates come from `LLM.chat`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from distill.backends.base import LABEL_WORDS, LLMResult, Messages, ScoreParams, p_from_top_logprobs
from distill.verdicts import parse_answer
from fusionlog.errors import ConfigError, LLMError

logger = logging.getLogger(__name__)

PINNED_VLLM = "0.10.1.1"


@dataclass(frozen=True)
class VLLMConfig:
    model: str  # hub id or local folder the GPU machine has (aliases resolve to hub ids)
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 8192
    dtype: str = "auto"
    batch_size: int = 64  # prompts per LLM.chat call

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"VLLMConfig.gpu_memory_utilization={self.gpu_memory_utilization}: must be in (0, 1]")
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"VLLMConfig.tensor_parallel_size={self.tensor_parallel_size}: must be >= 1")


def build_sampling_kwargs(params: ScoreParams) -> dict:
    """Our ScoreParams → keyword arguments for vllm.SamplingParams (guide added separately)."""
    return {
        "temperature": params.temperature,
        "max_tokens": 4 + max(0, params.reason_tokens),
        "logprobs": params.top_logprobs,
    }


def guided_choice(params: ScoreParams) -> list[str] | None:
    return list(LABEL_WORDS) if params.reason_tokens <= 0 else None


class VLLMBackend:
    name = "vllm"

    def __init__(self, config: VLLMConfig) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise LLMError(f"backend vllm needs a GPU machine with `pip install vllm=={PINNED_VLLM}`") from exc
        if getattr(vllm, "__version__", "") != PINNED_VLLM:
            logger.warning("vllm %s installed; this adapter was written for %s", vllm.__version__, PINNED_VLLM)
        self.config = config
        self.model_id = f"vllm:{config.model}"
        self._llm = vllm.LLM(
            model=config.model,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len,
            dtype=config.dtype,
        )

    def score(self, prompts: Sequence[Messages], params: ScoreParams | None = None) -> list[LLMResult]:
        from vllm import SamplingParams
        from vllm.sampling_params import GuidedDecodingParams

        params = params or ScoreParams()
        kwargs = build_sampling_kwargs(params)
        choice = guided_choice(params)
        if choice is not None:
            kwargs["guided_decoding"] = GuidedDecodingParams(choice=choice)
        sampling = SamplingParams(**kwargs)
        results: list[LLMResult] = []
        for start in range(0, len(prompts), self.config.batch_size):
            batch = [list(m) for m in prompts[start:start + self.config.batch_size]]
            outputs = self._llm.chat(batch, sampling, use_tqdm=False)
            results.extend(_result(o) for o in outputs)
        return results

    def close(self) -> None:
        self._llm = None


def _result(output) -> LLMResult:
    """RequestOutput → LLMResult: text for the label, first position's logprobs for P(anomalous)."""
    comp = output.outputs[0]
    text = comp.text or ""
    pt, ct = len(output.prompt_token_ids or []), len(comp.token_ids or [])
    parsed = parse_answer(text)
    if parsed is None:
        return LLMResult(None, None, text=text[:500], prompt_tokens=pt, completion_tokens=ct, error="malformed")
    p = None
    if comp.logprobs:
        top = {str(lp.decoded_token): float(lp.logprob) for lp in comp.logprobs[0].values()}
        p = p_from_top_logprobs(top)
    source = "logprobs" if p is not None else "text"
    if p is None:
        p = float(parsed.label)
    return LLMResult(p, parsed.label, parsed.reason, pt, ct, text=text[:500], extra={"p_source": source})
