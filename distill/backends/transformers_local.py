"""Local transformers backend: the CPU default and the reference for every other backend.

Why constrained choice instead of generation: a 0.5B model's free text is unreliable to parse, and
one greedy word carries no probability. We run the prompt once, then score each answer word
("normal" / "anomalous", lower and capitalised spellings) by its summed token log-likelihood as the
assistant's first word, and softmax the two class scores into P(anomalous). Every call yields a
probability; nothing depends on parsing. A short reason is generated only on request (it costs
one extra decode per token).

GGUF files are de-quantised to float32 by transformers (`gguf_file=`); that needs the `gguf` and
`accelerate` packages. An optional LoRA adapter (see distill/lora.py) is applied with peft.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

from distill.backends.base import LABEL_WORDS, LLMResult, Messages, ScoreParams, softmax2
from distill.models import ResolvedModel, resolve_model
from fusionlog.errors import LLMError
from fusionlog.io import publish_tree

logger = logging.getLogger(__name__)

#: Shortest shared prompt head worth reusing (below it a fresh forward pass costs about the same).
MIN_REUSED_TOKENS = 16


class TransformersBackend:
    """`score(prompts)` → one LLMResult per prompt with P(anomalous) from log-likelihoods."""

    name = "transformers"

    def __init__(self, model: str | ResolvedModel, adapter: str | Path | None = None, device: str = "cpu",
                 max_prompt_tokens: int = 4096, threads: int | None = None, convert_cache: bool = True,
                 reuse_prefix: bool = True) -> None:

        self.resolved = model if isinstance(model, ResolvedModel) else resolve_model(model, local=True)
        self.device = device
        self.max_prompt_tokens = max_prompt_tokens
        self.threads = threads  # set around each call (`torch_threads`), not for the whole process
        t0 = time.perf_counter()
        self.tokenizer, self.model = load_model(self.resolved, device, convert_cache)
        self.adapter_id = ""
        if adapter is not None:
            from distill.lora import apply_adapter

            self.model, self.adapter_id = apply_adapter(self.model, Path(adapter), self.resolved)
        self.model.eval()
        self.model_id = self.resolved.identity + (f"+lora:{self.adapter_id}" if self.adapter_id else "")
        self.load_seconds = time.perf_counter() - t0
        self._options = self._option_tokens()
        self.reuse_prefix = reuse_prefix
        self._last: tuple[tuple, list[int], object] | None = None  # (which model, prompt ids, its KV cache)
        self.reused_tokens = 0  # prompt tokens whose KV came from the previous prompt (for benchmarks)
        self._cache_kwarg = _cache_kwarg(self.model)
        logger.info("loaded %s in %.1fs (%s)", self.resolved.name, self.load_seconds, self.model_id)

    def _option_tokens(self) -> list[list[list[int]]]:
        """Token ids of each spelling of each label word, per class: [[normal...], [anomalous...]]."""
        out = []
        for word in LABEL_WORDS:
            spellings = {word, word.capitalize()}
            ids = [self.tokenizer.encode(s, add_special_tokens=False) for s in sorted(spellings)]
            out.append([x for x in ids if x])
        return out

    def encode(self, messages: Messages) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def score(self, prompts: Sequence[Messages], params: ScoreParams | None = None) -> list[LLMResult]:
        from fusionlog.threads import torch_threads

        params = params or ScoreParams()
        with torch_threads(self.threads):
            return [self._score_one(m, params) for m in prompts]

    def _score_one(self, messages: Messages, params: ScoreParams) -> LLMResult:
        import torch

        ids = self.encode(messages)
        if len(ids) > self.max_prompt_tokens:
            return LLMResult(None, None, prompt_tokens=len(ids), error=f"prompt too long ({len(ids)} tokens)")
        with torch.inference_mode():
            out = self._prompt_forward(ids)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            cache = _cache_of(out)
            if self.reuse_prefix:
                self._last = (self._which(), ids, cache)  # _continuation_logprob never mutates it (it copies)
            scored = 0
            class_lp = []
            for spellings in self._options:
                lps = []
                for toks in spellings:
                    lp, n = self._continuation_logprob(first, cache, toks)
                    lps.append(lp)
                    scored += n
                class_lp.append(_logsumexp(lps))
        p = softmax2(class_lp[0], class_lp[1])
        label = int(p >= 0.5)
        reason, gen_tokens = "", 0
        if params.reason_tokens > 0:
            reason, gen_tokens = self._reason(ids, label, params.reason_tokens)
        return LLMResult(p, label, reason, prompt_tokens=len(ids), completion_tokens=scored + gen_tokens,
                         extra={"lp_normal": class_lp[0], "lp_anomalous": class_lp[1]})

    def _prompt_forward(self, ids: list[int]):
        """The model on the prompt, starting from the previous prompt's KV cache over their common prefix.

        Why: the labeller's prompts share a long head (the system message and instructions: ~170 of the
        ~250 tokens of a template prompt), and on a CPU the forward pass over the prompt is nearly all of a
        call's cost. The KV of a shared prefix does not depend on what follows it, so the answer is the same
        up to float rounding. Needs a cache that can be cut back (`crop`); otherwise the whole prompt runs.
        """
        import torch

        if self.reuse_prefix and self._last is not None and self._last[0] == self._which():
            _, prev, prev_cache = self._last
            keep = min(_common_prefix(prev, ids), len(ids) - 1)  # at least one new token gives the logits
            if keep >= MIN_REUSED_TOKENS and hasattr(prev_cache, "crop"):
                cache = copy.deepcopy(prev_cache)
                cache.crop(-(cache.get_seq_length() - keep))  # negative: tokens to drop (transformers 4.x and 5.x)
                self.reused_tokens += keep
                x = torch.tensor([ids[keep:]], device=self.device)
                return self.model(input_ids=x, use_cache=True, **{self._cache_kwarg: cache})
        return self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)

    def forget_prefix(self) -> None:
        """Drop the kept prompt KV: the next prompt runs in full (benchmarks; frees its memory)."""
        self._last = None

    def _which(self) -> tuple:
        """The model a cached prefix belongs to: a LoRA round swaps `self.model` for a new (trained) object."""
        return id(self.model), self.model_id

    def _continuation_logprob(self, first, cache, toks: list[int]) -> tuple[float, int]:
        """log P(toks | prompt): the first token from the prompt's last logits, the rest by feeding
        the option through a copy of the prompt's KV cache (the cache is mutated in place)."""
        import torch

        total = float(first[toks[0]])
        if len(toks) > 1:
            cont = torch.tensor([toks[:-1]], device=self.device)
            out = self.model(input_ids=cont, use_cache=True, **{self._cache_kwarg: copy.deepcopy(cache)})
            logp = torch.log_softmax(out.logits[0].float(), dim=-1)
            for i, tok in enumerate(toks[1:]):
                total += float(logp[i, tok])
        return total, len(toks)

    def _reason(self, ids: list[int], label: int, max_new: int) -> tuple[str, int]:
        import torch

        prefix = self.tokenizer.encode(LABEL_WORDS[label] + ".", add_special_tokens=False)
        x = torch.tensor([ids + prefix], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(x, max_new_tokens=max_new, do_sample=False,
                                      pad_token_id=self.tokenizer.eos_token_id)
        new = out[0, x.shape[1]:].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return " ".join(text.split())[:240], len(new)

    def close(self) -> None:
        self._last = None
        self.model = None  # type: ignore[assignment]


def load_model(resolved: ResolvedModel, device: str = "cpu", convert_cache: bool = True):
    """(tokenizer, model) from a GGUF file or a transformers folder, offline only.

    De-quantising a GGUF and rebuilding its tokenizer takes 30 s to minutes on 2 cores; with
    `convert_cache` the result is saved once as safetensors + tokenizer.json under
    <cache>/models/converted/<identity hash>/ and later starts load that folder in seconds.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if resolved.folder is None:
        raise LLMError(f"model {resolved.name!r} has no local weights; use --backend vllm or openai for it")
    converted = converted_dir(resolved) if (resolved.gguf_file and convert_cache) else None
    if converted is not None and (converted / CONVERTED_MARK).is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(converted), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(converted), dtype=torch.float32, local_files_only=True)
            return tokenizer, model.to(device)
        except (OSError, ValueError) as exc:
            logger.warning("converted copy %s unreadable (%s); converting again", converted, exc)
    kwargs = {"local_files_only": True}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
        try:
            import gguf  # noqa: F401
        except ImportError as exc:
            raise LLMError("loading a GGUF file through transformers needs `pip install gguf`") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(resolved.folder), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(resolved.folder), dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise LLMError(f"model {resolved.name!r}: cannot load from {resolved.folder}: {exc}") from exc
    if converted is not None:
        _save_converted(converted, tokenizer, model)
    return tokenizer, model.to(device)


CONVERTED_MARK = "fusionlog_converted.json"


def converted_dir(resolved: ResolvedModel) -> Path:
    import hashlib

    from distill.models import models_dir

    digest = hashlib.sha256(resolved.identity.encode()).hexdigest()[:16]
    return models_dir() / "converted" / f"{resolved.name.replace('/', '_')[:40]}-{digest}"


def _save_converted(folder: Path, tokenizer, model) -> None:
    """Write to a temp folder and rename, so a crash never leaves a half-written copy behind."""
    import json
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        # save_pretrained refuses GGUF-loaded models (it treats them as quantized), yet the weights
        # are plain de-quantised float32: write config + safetensors ourselves.
        from safetensors.torch import save_model

        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.save_pretrained(str(tmp))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(tmp))
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(str(tmp))
        (tmp / CONVERTED_MARK).write_text(json.dumps({"from": "gguf"}) + "\n", encoding="utf-8")
        publish_tree(tmp)  # mkdtemp's 0700 and save_model's 0600: a cache shared by users must be readable
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except (OSError, ValueError, RuntimeError) as exc:
        logger.warning("could not keep a converted copy in %s: %s", folder, exc)
        shutil.rmtree(tmp, ignore_errors=True)


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed the KV-cache argument `past_key_values` → `cache`; accept both."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))

