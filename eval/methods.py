"""Method registry of the benchmark: each method turns a `TargetContext` into test scores + threshold.

To add a method (later: `llm-only`, `fusionlog`), write a function ``(ctx, seed, options) ->
MethodOutput`` and decorate it with ``@register_method("name", "one-line description")``. A method that
routes sessions (the semantic router) fills ``MethodOutput.parts`` with one part name per test session
("general" / "proprietary"); the harness then adds per-part precision/recall/F1 to the results.
Extra per-run figures (LLM calls, tokens, router sizes) go in ``MethodOutput.extra`` and are copied into
that seed's entry of results.json: new keys, never renamed ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fusionlog.detector import DEFAULT_THRESHOLD_RULE, SystemSessions
from fusionlog.types import Session


@dataclass
class TargetContext:
    """Everything a method may see. No target label is in here: `pool` and `test` are label-free."""

    target: str
    system: str
    sources: list[SystemSessions]  # labelled source systems
    pool: SystemSessions  # the target's unlabelled adaptation pool (+ the target's template vectors)
    test: list[Session]  # the target's test sessions, labels hidden (the harness keeps them apart)
    anchor_vectors: np.ndarray | None = None  # embeddings of fusionlog.model.ANCHOR_TEXTS (shared space)


@dataclass
class MethodOutput:
    scores: np.ndarray  # (n_test,) higher = more anomalous
    threshold: float  # verdict = scores > threshold
    train_seconds: float = 0.0
    score_seconds: float = 0.0
    parts: np.ndarray | None = None  # (n_test,) part name per test session, for per-part F1
    extra: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # diagnostics saved in scores.npz (pool scores)
    # (test scores, threshold) of each intermediate model, e.g. every distillation round; the protocol
    # scores them with the test labels a method never sees
    stages: list[tuple[np.ndarray, float]] = field(default_factory=list)


@dataclass(frozen=True)
class MethodOptions:
    """Run-wide settings every method may read."""

    train_overrides: dict = field(default_factory=dict)  # TrainConfig fields given on the command line
    threshold_rule: str | None = None  # None = the detector default
    device: str = "cpu"
    llm: str = "qwen2.5-coder-0.5b"  # for llm-only and fusionlog
    llm_backend: str = "auto"
    llm_base_url: str = "http://127.0.0.1:8000/v1"
    llm_budget: int = 32  # llm-only: distinct test sequences asked; fusionlog: LLM calls per round
    rounds: int = 2  # fusionlog distillation rounds
    llm_probe: int = 6  # fusionlog: labelled source sequences per class that set the LLM's trust (0 = off)
    llm_probe_templates: int = 12  # fusionlog, template teacher: labelled templates per class and source (0 = off)
    teacher: str = "template"  # how the LLM labels: "template" (the default; distill.template_teacher) or "session"
    llm_backend_obj: Any = None  # a ready backend object (tests / programmatic use), replaces `llm`
    llm_cache: str | None = None  # verdict cache path (default: the user cache)
    model_overrides: dict = field(default_factory=dict)  # SessionModelConfig fields (`--model KEY=VALUE`)


MethodFn = Callable[[TargetContext, int, MethodOptions], MethodOutput]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    fn: MethodFn


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, description: str) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = MethodSpec(name, description, fn)
        return fn

    return deco


def method_names() -> list[str]:
    return list(METHODS)


# -- the methods of issue 3 -------------------------------------------------------------------------


@register_method(
    "unseen-template", "label-free baseline: anomalous if a test session has a template unseen in the pool"
)
def unseen_template(ctx: TargetContext, seed: int, options: MethodOptions) -> MethodOutput:
    t0 = time.perf_counter()
    seen = {e for s in ctx.pool.sessions for e in s.event_ids}
    t1 = time.perf_counter()
    scores = np.array([len(set(s.event_ids) - seen) for s in ctx.test], dtype=np.float32)
    t2 = time.perf_counter()
    # score = number of distinct unseen templates; > 0.5 means "at least one"
    return MethodOutput(scores, 0.5, t1 - t0, t2 - t1, extra={"threshold_rule": "any unseen template"})


def _detector_method(ctx: TargetContext, seed: int, options: MethodOptions, forced: dict) -> MethodOutput:
    from fusionlog.detector import Detector
    from fusionlog.model import SessionModelConfig
    from fusionlog.training import TrainConfig

    fields = {**options.train_overrides, **forced, "seed": seed, "device": options.device}
    cfg = replace(TrainConfig(), **fields)
    det = Detector(replace(SessionModelConfig(), **options.model_overrides), train_config=cfg,
                   threshold_rule=options.threshold_rule or DEFAULT_THRESHOLD_RULE)
    t0 = time.perf_counter()
    det.fit(ctx.sources, ctx.pool, ctx.anchor_vectors)
    t1 = time.perf_counter()
    scores = det.decision_function(ctx.test)
    t2 = time.perf_counter()
    info = det.threshold_info_
    pool_scores, pool_weights = det.pool_scores_
    arrays = {"pool_scores": pool_scores, "pool_weights": pool_weights, "pool_surprising": det.pool_surprising_}
    floor = det.model_.unit_floor()
    if floor is not None:  # what `pool-surprise` reads when every pool input is surprising (threshold_study)
        arrays["unit_floor"] = np.array([floor], dtype=np.float64)
    for system, v_scores, v_labels, v_weights in det.source_validation_:
        arrays |= {f"val/{system}/scores": v_scores, f"val/{system}/labels": v_labels,
                   f"val/{system}/weights": v_weights}
    return MethodOutput(
        scores, det.threshold_, t1 - t0, t2 - t1,
        extra={
            "threshold_rule": info.rule,
            "threshold_source": info.source,
            "best_epoch": det.report_.best_epoch,
            "epochs_run": len(det.report_.history),
        },
        arrays=arrays,
    )


@register_method(
    "rarity", "label-free baseline: mean of the model's rarity features vs the pool (no training), default threshold"
)
def rarity(ctx: TargetContext, seed: int, options: MethodOptions) -> MethodOutput:
    """How far "unusual here" alone goes: the model's own wide-path inputs, weighted equally, untrained.

    Rarity of the session's template set and of its rarest and average template, and how much of the
    everyday templates it lacks, each against the unlabelled pool (pool sessions counted leave-one-out, as
    in training), so 0 = common, 1 = never seen.
    """
    from fusionlog.model import ReferenceStats, SessionModelConfig, encode_sessions, surprising
    from fusionlog.threshold import POOL_RULES, choose_threshold

    t0 = time.perf_counter()
    mc = replace(SessionModelConfig(), **options.model_overrides)
    stats = ReferenceStats.from_sessions(ctx.pool.sessions, len(ctx.pool.vectors), trim=mc.trim_reference)
    max_len = mc.max_len
    # one score per distinct model input, leave-one-out, as the detector's pool-side rules see the pool
    enc = encode_sessions(ctx.pool.sessions, stats, max_len, in_corpus=True)
    pool, counts = enc.session_features.mean(axis=1), enc.counts.astype(np.float64)
    rule = options.threshold_rule if options.threshold_rule in POOL_RULES else DEFAULT_THRESHOLD_RULE
    pool_surprising = surprising(enc.session_features)
    thr = choose_threshold(rule, pool_scores=pool, pool_weights=counts, pool_surprising=pool_surprising)
    t1 = time.perf_counter()
    test = encode_sessions(ctx.test, stats, max_len, in_corpus=False)
    scores = test.session_features.mean(axis=1)[test.index].astype(np.float32)
    return MethodOutput(scores, thr.value, t1 - t0, time.perf_counter() - t1,
                        extra={"threshold_rule": thr.rule, "threshold_source": thr.source},
                        arrays={"pool_scores": pool, "pool_weights": counts, "pool_surprising": pool_surprising})


@register_method(
    "surprise", "label-free baseline: the session's set surprise vs the pool (no training), flagged above 1 unit"
)
def surprise(ctx: TargetContext, seed: int, options: MethodOptions) -> MethodOutput:
    """The template set's negative log-likelihood under the pool's per-template frequencies, in units of
    one never-seen template (`ReferenceStats.surprise`), with the threshold fixed a priori at 1 unit: a
    session departs from the pool in more ways than one new line would. No training, no threshold search.
    """
    from fusionlog.model import SURPRISE_UNIT, ReferenceStats, SessionModelConfig

    t0 = time.perf_counter()
    trim = replace(SessionModelConfig(), **options.model_overrides).trim_reference  # as the general path counts
    stats = ReferenceStats.from_sessions(ctx.pool.sessions, len(ctx.pool.vectors), trim=trim)
    pool = np.array([stats.surprise(s.event_ids, in_corpus=True) for s in ctx.pool.sessions], np.float32)
    t1 = time.perf_counter()
    scores = np.array([stats.surprise(s.event_ids, in_corpus=False) for s in ctx.test], dtype=np.float32)
    return MethodOutput(scores, SURPRISE_UNIT, t1 - t0, time.perf_counter() - t1,
                        extra={"threshold_rule": "fixed: 1 unit of surprise", "threshold_source": "constant"},
                        arrays={"pool_scores": pool, "pool_weights": np.ones(len(pool))})


@register_method("source-only", "GRU trained supervised on the sources, applied to the target as is (zero-shot)")
def source_only(ctx: TargetContext, seed: int, options: MethodOptions) -> MethodOutput:
    return _detector_method(ctx, seed, options, {"meta": False, "adversarial_weight": 0.0})


@register_method("general", "meta-learning across sources + domain-adversarial alignment to the unlabelled pool")
def general(ctx: TargetContext, seed: int, options: MethodOptions) -> MethodOutput:
    return _detector_method(ctx, seed, options, {})
