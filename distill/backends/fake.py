"""Scripted backend for control-flow unit tests only (retry, abstain, cache); never a quality figure."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from distill.backends.base import LLMResult, Messages, ScoreParams
from distill.verdicts import parse_answer


class ScriptedBackend:
    """Answers each prompt with `reply(messages) -> text`, parsed like a generating backend's text."""

    name = "fake"

    def __init__(self, reply: Callable[[Messages], str], model_id: str = "scripted") -> None:
        self.reply = reply
        self.model_id = model_id
        self.calls = 0
        self.seen: list[Messages] = []

    def score(self, prompts: Sequence[Messages], params: ScoreParams | None = None) -> list[LLMResult]:
        out = []
        for messages in prompts:
            self.calls += 1
            self.seen.append(messages)
            text = self.reply(messages)
            parsed = parse_answer(text)
            if parsed is None:
                out.append(LLMResult(None, None, text=text, prompt_tokens=10, completion_tokens=3, error="malformed"))
                continue
            p = parsed.prob if parsed.prob is not None else 0.1 + 0.8 * parsed.label
            out.append(LLMResult(p, parsed.label, parsed.reason, 10, 3, text=text))
        return out

    def close(self) -> None:
        pass
