"""LLM backends behind one interface (base.LLMBackend); `make_backend` picks one from a BackendConfig.

Each backend module is imported only when chosen, so vllm, torch or httpx load only when used.
"""

from __future__ import annotations

from distill.backends.base import LABEL_WORDS, LLMBackend, LLMResult, Messages, ScoreParams
from distill.config import BackendConfig
from distill.models import resolve_model


def make_backend(config: BackendConfig) -> LLMBackend:
    if config.backend == "transformers":
        from distill.backends.transformers_local import TransformersBackend

        return TransformersBackend(config.model, adapter=config.adapter, device=config.device)
    if config.backend == "openai":
        from distill.backends.openai_compat import OpenAIBackend, OpenAIConfig

        served = resolve_model(config.model, local=False).hub_id or config.model
        return OpenAIBackend(OpenAIConfig(
            base_url=config.base_url, model=served, api_key_env=config.api_key_env,
            timeout_s=config.timeout_s, max_retries=config.max_retries, concurrency=config.concurrency,
        ))
    from distill.backends.vllm_offline import VLLMBackend, VLLMConfig

    served = resolve_model(config.model, local=False).hub_id or config.model
    return VLLMBackend(VLLMConfig(model=served, tensor_parallel_size=config.tensor_parallel_size))


__all__ = ["LABEL_WORDS", "LLMBackend", "LLMResult", "Messages", "ScoreParams", "make_backend"]
