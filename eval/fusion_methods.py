"""Harness methods that use an LLM: `llm-only` (the LLM labels test sessions itself) and `fusionlog`.

Both read the same `MethodOptions.llm*` settings as the main job. On this CPU machine the embedded
Qwen2.5-Coder-0.5B costs seconds per call, so budgets are small by default (`--llm-budget`).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from eval.methods import MethodOptions, MethodOutput, TargetContext, register_method


def target_dataset(ctx: TargetContext, sessions):
    from fusionlog.types import SessionDataset

    return SessionDataset(ctx.pool.name, ctx.system, list(ctx.pool.templates or []), list(sessions), False)


def source_router(ctx: TargetContext):
    """The training-free router fitted on the context's labelled sources (shared by methods and the harness)."""
    from fusionlog.prepare import PreparedDataset
    from fusionlog.types import SessionDataset
    from router import SemanticRouter

    def as_prepared(ss):
        return PreparedDataset(SessionDataset(ss.name, ss.system, list(ss.templates or []), list(ss.sessions),
                                              False), ss.vectors)

    return SemanticRouter().fit([as_prepared(s) for s in ctx.sources])


def _labeller(ctx: TargetContext, options: MethodOptions, sessions, router, route):
    from distill.rounds import DistillConfig
    from fusionlog.pipeline import FuseConfig, LazyLabeller

    cfg = FuseConfig(target=ctx.target, llm=options.llm, llm_backend=options.llm_backend,
                     llm_base_url=options.llm_base_url, progress=False, distill=DistillConfig(teacher=options.teacher))
    from pathlib import Path

    cache = Path(options.llm_cache) if options.llm_cache else None
    return LazyLabeller(cfg, router, route, list(sessions), target_dataset(ctx, sessions),
                        options.llm_backend_obj, cache, sources=ctx.sources)


@register_method("llm-only", "the LLM labels the test sessions itself (distinct sequences, within --llm-budget)")
def llm_only(ctx: TargetContext, seed: int, options: MethodOptions) -> MethodOutput:
    """Sequences beyond the budget get score 0.5 (no verdict) and are counted in `unlabelled_sessions`."""
    t0 = time.perf_counter()
    router = source_router(ctx)
    test = list(ctx.test)
    route = router.split(target_dataset(ctx, ctx.pool.sessions), ctx.pool.vectors, sessions=test,
                         idf_sessions=ctx.pool.sessions)
    labeller = _labeller(ctx, options, test, router, route)
    counts: dict[tuple, list[int]] = {}
    for i, s in enumerate(test):
        counts.setdefault(tuple(s.event_ids), []).append(i)
    order = sorted(counts, key=lambda k: -len(counts[k]))[: options.llm_budget]
    reps = [test[counts[k][0]] for k in order]
    try:
        got, stats = labeller(reps, np.full(len(reps), 0.5), False) if reps else ({}, {})
    finally:
        labeller.close()
    scores = np.full(len(test), 0.5, dtype=np.float32)
    for seq, prob in got.items():
        scores[counts[seq]] = prob
    covered = sum(len(counts[k]) for k in got)
    return MethodOutput(scores, 0.5, 0.0, time.perf_counter() - t0, extra={
        "threshold_rule": "LLM label (P >= 0.5)", "llm": options.llm, "llm_calls": int(stats.get("calls", 0)),
        "llm_tokens": int(stats.get("prompt_tokens", 0)) + int(stats.get("completion_tokens", 0)),
        "unlabelled_sessions": len(test) - covered,
    })


@register_method("fusionlog", "general path + router + LLM labels of proprietary pool sessions, distilled in rounds")
def fusionlog(ctx: TargetContext, seed: int, options: MethodOptions) -> MethodOutput:
    from distill.finetune import FinetuneConfig
    from distill.rounds import DistillConfig, RoundContext, run_rounds
    from fusionlog.detector import DEFAULT_THRESHOLD_RULE, Detector
    from fusionlog.pipeline import pool_rethreshold
    from fusionlog.training import TrainConfig

    t0 = time.perf_counter()
    cfg = replace(TrainConfig(), **{**options.train_overrides, "seed": seed, "device": options.device})
    from fusionlog.model import SessionModelConfig

    stages: list[tuple[np.ndarray, float]] = []  # each round's test scores; the protocol scores them
    det = Detector(replace(SessionModelConfig(), **options.model_overrides), train_config=cfg,
                   threshold_rule=options.threshold_rule or DEFAULT_THRESHOLD_RULE)
    det.fit(ctx.sources, ctx.pool, ctx.anchor_vectors)
    pool = list(ctx.pool.sessions)
    router = source_router(ctx)
    route = router.split(target_dataset(ctx, pool), ctx.pool.vectors, sessions=pool, idf_sessions=pool)
    labeller = _labeller(ctx, options, pool, router, route)
    rctx = RoundContext(det, ctx.sources, pool, np.asarray(route.general_mask, dtype=bool), labeller,
                        lambda d: pool_rethreshold(d, pool), evaluate=lambda d: _stage(stages, d, ctx.test),
                        probe_fn=labeller.probe, have_weights=labeller.have_weights)
    distill = DistillConfig(rounds=options.rounds, calls_per_round=options.llm_budget,
                            probe_per_class=options.llm_probe, probe_templates=options.llm_probe_templates,
                            finetune=replace(FinetuneConfig(), seed=seed), teacher=options.teacher)
    try:
        with tempfile.TemporaryDirectory(prefix="fusionlog-eval-") as tmp:
            det, history = run_rounds(rctx, distill, tmp)
            teacher = _llm_pool_probs(Path(tmp), pool)
    finally:
        labeller.close()
    t1 = time.perf_counter()
    scores = det.decision_function(ctx.test)
    return MethodOutput(scores, det.threshold_, t1 - t0, time.perf_counter() - t1, extra={
        "threshold_rule": det.threshold_info_.rule, "llm": options.llm,
        "llm_calls": int(sum(h.llm_calls for h in history)),
        "llm_tokens": int(sum(h.llm_tokens for h in history)),
        "llm_labelled_sequences": int(sum(h.llm_labelled_sequences for h in history)),
        "rounds_run": len(history) - 1,
        "llm_probe": history[0].llm_probe,
        "deep_bound": float(det.model_.config.deep_bound),
        "teacher": options.teacher,
    }, stages=stages, arrays={"llm_pool_probs": teacher})


def _llm_pool_probs(out_dir: Path, pool: list) -> np.ndarray:
    """P(anomalous) the LLM gave each pool session (NaN: not asked), from the last round's state.

    Saved in scores.npz so the LLM's label quality on the *target* can be measured afterwards against
    the pool's labels, which the method never sees (`python -m eval.teacher_quality RUN`).
    """
    from distill.rounds import ROUNDS_DIR, last_complete_round

    found = last_complete_round(out_dir / ROUNDS_DIR)
    verdicts = {tuple(json.loads(k)): float(v["prob"]) for k, v in (found[1]["llm"] if found else {}).items()}
    return np.array([verdicts.get(tuple(s.event_ids), np.nan) for s in pool], dtype=np.float64)


def _stage(stages: list, det, test) -> None:
    """The rounds' `evaluate` hook: keep this round's test scores (round 0 = the general path)."""
    stages.append((det.decision_function(test), float(det.threshold_)))
