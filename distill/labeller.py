"""The labeller: select → dedupe → rank → budget → prompt → cache/backend → parse → verdicts.

Why each step:
- dedupe by event sequence: thousands of sessions share a few hundred sequences; one call per
  distinct sequence, and every member session gets the verdict;
- rank by the small model's uncertainty (P closest to 0.5 first) when its scores are given, so a
  limited budget goes where the small model needs help; without scores the order is deterministic
  (most frequent sequences first, or a seeded shuffle for unbiased evaluation samples);
- the cache is consulted before every call and written after every answer, so a rerun or a crash
  never pays twice; the budget counts sequences selected, not calls paid, so a rerun with a warm
  cache labels exactly the same sessions;
- a failed or malformed answer is retried, then the sequence is recorded as an abstention (counted).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from distill.backends.base import LLMBackend, LLMResult, Messages, ScoreParams
from distill.cache import VerdictCache, cache_key
from distill.calibration import PlattCalibration
from distill.config import LabelConfig
from distill.prompts import PromptTemplate
from distill.render import Example, approx_tokens, render_examples, render_session, render_small_model_view
from distill.retrieval import ExamplesFor
from distill.verdicts import Verdict
from fusionlog.errors import ConfigError
from fusionlog.types import Session

logger = logging.getLogger(__name__)


@dataclass
class Group:
    """Sessions sharing one event sequence (`indices` into the input list, first is representative)."""

    sequence_id: str
    event_ids: list[int]
    indices: list[int]
    small_prob: float | None = None


@dataclass
class LabelStats:
    sessions: int = 0
    distinct_sequences: int = 0
    selected_sequences: int = 0
    labelled_sequences: int = 0
    abstained_sequences: int = 0
    labelled_sessions: int = 0
    calls: int = 0  # backend requests actually paid (retries included)
    retries: int = 0
    cache_hits: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # error kind -> count (before retries)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def calls_per_second(self) -> float:
        return round(self.calls / self.llm_seconds, 4) if self.llm_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return dict(asdict(self), calls_per_second=self.calls_per_second)


@dataclass
class LabelRun:
    verdicts: list[Verdict]  # one per labelled session (abstentions included, label None)
    stats: LabelStats

    def sequence_probs(self, sessions: Sequence[Session]) -> dict[tuple, float]:
        """{event sequence: P(anomalous)} of the answered verdicts; `sessions` are the ones labelled."""
        by_key = {s.key: tuple(s.event_ids) for s in sessions}
        return {by_key[v.key]: float(v.prob) for v in self.verdicts if v.prob is not None and not v.abstained}


def add_counts(totals: dict, stats: dict) -> dict:
    """Sum the numeric entries of `stats` into `totals` (several labeller runs, one summary)."""
    for k, v in stats.items():
        if isinstance(v, (int, float)):
            totals[k] = totals.get(k, 0) + v
    return totals


def sequence_id(event_ids: Sequence[int]) -> str:
    return hashlib.sha256(",".join(map(str, event_ids)).encode()).hexdigest()[:16]


def dedupe(sessions: Sequence[Session], small_probs: np.ndarray | None = None) -> list[Group]:
    """Groups in first-occurrence order; a group's small_prob is the mean of its members'."""
    groups: dict[tuple[int, ...], Group] = {}
    for i, s in enumerate(sessions):
        seq = tuple(s.event_ids)
        g = groups.get(seq)
        if g is None:
            g = groups[seq] = Group(sequence_id(seq), list(seq), [])
        g.indices.append(i)
    out = list(groups.values())
    if small_probs is not None:
        probs = np.asarray(small_probs, dtype=float)
        if probs.shape != (len(sessions),):
            raise ConfigError(f"small_probs has shape {probs.shape}; expected ({len(sessions)},), one per session")
        for g in out:
            g.small_prob = float(probs[g.indices].mean())
    return out


def rank(groups: list[Group], order: str = "frequency", seed: int = 0) -> list[Group]:
    """Most uncertain first when small-model scores exist; else by frequency or a seeded shuffle.

    Ties break by group size (more sessions covered) and then first occurrence, so the order is
    fully deterministic.
    """
    pos = {id(g): i for i, g in enumerate(groups)}
    if groups and groups[0].small_prob is not None:
        return sorted(groups, key=lambda g: (abs(g.small_prob - 0.5), -len(g.indices), pos[id(g)]))
    if order == "seeded":
        shuffled = list(groups)
        random.Random(seed).shuffle(shuffled)
        return shuffled
    return sorted(groups, key=lambda g: (-len(g.indices), pos[id(g)]))


def budget(n_sessions: int, n_groups: int, config: LabelConfig) -> int:
    """How many distinct sequences may be sent: the tighter of max_calls and fraction x sessions."""
    limit = n_groups
    if config.max_calls is not None:
        limit = min(limit, config.max_calls)
    if config.fraction is not None:
        limit = min(limit, math.ceil(config.fraction * n_sessions))
    return limit


def render_messages(prompt: PromptTemplate, config: LabelConfig, session: Session, templates: Sequence[str],
                    system: str, examples: Sequence[Example] | None = None,
                    small_prob: float | None = None) -> Messages:
    """Every variable a template may use; the template picks the ones it declares. Shared by the
    labeller and LoRA tuning, so training prompts and labelling prompts have the same shape."""
    view = render_session(session.event_ids, templates, config.max_session_tokens, approx_tokens)
    values: dict[str, object] = {
        "system": system,
        "session": view.block,
        "n_events": view.n_events,
        "n_distinct": view.n_distinct,
        "small_model_view": render_small_model_view(small_prob),
        "examples": render_examples(list(examples or []), config.max_example_tokens, approx_tokens),
    }
    return prompt.render(values)


class Labeller:
    """Constructed once per run; `label(...)` may be called per round (the cache spans rounds)."""

    def __init__(self, backend: LLMBackend, prompt: PromptTemplate, config: LabelConfig | None = None,
                 cache: VerdictCache | None = None, examples_for: ExamplesFor | None = None,
                 calibration: PlattCalibration | None = None, progress: bool | None = None) -> None:
        self.backend = backend
        self.prompt = prompt
        self.config = config or LabelConfig()
        self.cache = cache
        self.examples_for = examples_for
        self.calibration = calibration
        self.progress = progress
        self.params = ScoreParams(reason_tokens=self.config.reason_tokens)

    def build_messages(self, session: Session, templates: Sequence[str], system: str,
                       small_prob: float | None = None) -> Messages:
        examples = None
        if "examples" in self.prompt.variables and self.examples_for and self.config.k_examples:
            examples = self.examples_for(session)[: self.config.k_examples]
        return render_messages(self.prompt, self.config, session, templates, system, examples, small_prob)

    def label(self, sessions: Sequence[Session], templates: Sequence[str], system: str,
              small_probs: np.ndarray | None = None) -> LabelRun:
        t0 = time.perf_counter()
        stats = LabelStats(sessions=len(sessions))
        groups = rank(dedupe(sessions, small_probs), self.config.order, self.config.seed)
        stats.distinct_sequences = len(groups)
        chosen = groups[: budget(len(sessions), len(groups), self.config)]
        stats.selected_sequences = len(chosen)
        verdicts: list[Verdict] = []
        bar = _progress_bar(len(chosen), self.progress, f"label {system}")
        for start in range(0, len(chosen), self.config.batch_size):
            batch = chosen[start:start + self.config.batch_size]
            messages = [self.build_messages(sessions[g.indices[0]], templates, system, g.small_prob) for g in batch]
            results = self._answer(messages, stats)
            for g, (result, attempts, cached) in zip(batch, results, strict=True):
                verdicts.extend(self._verdicts(g, sessions, result, attempts, cached, stats))
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        stats.seconds = round(time.perf_counter() - t0, 3)
        stats.llm_seconds = round(stats.llm_seconds, 3)
        logger.info(
            "labelled %d/%d sequences (%d sessions) of %s: %d abstained, %d calls, %d cache hits, %.2f calls/s",
            stats.labelled_sequences, stats.distinct_sequences, stats.labelled_sessions, system,
            stats.abstained_sequences, stats.calls, stats.cache_hits, stats.calls_per_second,
        )
        return LabelRun(verdicts, stats)

    def _key(self, messages: Messages) -> str:
        return cache_key(self.backend.name, self.backend.model_id, self.prompt.sha256, self.params, messages)

    def _answer(self, messages: list[Messages], stats: LabelStats) -> list[tuple[LLMResult, int, bool]]:
        """(result, attempts, cached) per prompt: cache first, then up to 1 + max_retries calls."""
        keys = [self._key(m) for m in messages]
        out: list[tuple[LLMResult, int, bool] | None] = [None] * len(messages)
        pending: list[int] = []
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                stats.cache_hits += 1
                out[i] = (hit, 0, True)
            else:
                pending.append(i)
        attempts = dict.fromkeys(pending, 0)
        last: dict[int, LLMResult] = {}
        for round_no in range(self.config.max_retries + 1):
            if not pending:
                break
            if round_no:
                stats.retries += len(pending)
            t = time.perf_counter()
            results = self.backend.score([messages[i] for i in pending], self.params)
            stats.llm_seconds += time.perf_counter() - t
            still: list[int] = []
            for i, r in zip(pending, results, strict=True):
                stats.calls += 1
                attempts[i] += 1
                stats.prompt_tokens += r.prompt_tokens
                stats.completion_tokens += r.completion_tokens
                last[i] = r
                if r.ok:
                    if self.cache is not None:
                        self.cache.put(keys[i], r, self.backend.name, self.backend.model_id, self.prompt.sha256)
                    out[i] = (r, attempts[i], False)
                else:
                    kind = (r.error or "malformed").split(":")[0]
                    stats.failures[kind] = stats.failures.get(kind, 0) + 1
                    still.append(i)
            pending = still
        for i in pending:
            out[i] = (last[i], attempts[i], False)
        return out  # type: ignore[return-value]

    def _verdicts(self, g: Group, sessions: Sequence[Session], r: LLMResult, attempts: int, cached: bool,
                  stats: LabelStats) -> list[Verdict]:
        if not r.ok:
            stats.abstained_sequences += 1
            return [Verdict(sessions[i].key, g.sequence_id, None, None, 0.0, "", True, cached, attempts,
                            r.error or "malformed") for i in g.indices]
        p = float(r.p_anomalous)  # type: ignore[arg-type]
        if self.calibration is not None:
            p = self.calibration.apply(p)
        label = int(p >= self.config.threshold)
        stats.labelled_sequences += 1
        stats.labelled_sessions += len(g.indices)
        conf = round(max(p, 1.0 - p), 4)
        return [Verdict(sessions[i].key, g.sequence_id, label, round(p, 4), conf, r.reason, False, cached, attempts)
                for i in g.indices]


def _progress_bar(total: int, progress: bool | None, desc: str):
    """tqdm only at INFO (or when asked), like sentence-transformers' show_progress_bar."""
    show = progress if progress is not None else logger.isEnabledFor(logging.INFO)
    if not show or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="seq")
