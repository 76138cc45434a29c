"""Zero-label protocol for one target: split, hide labels, run each method per seed, score the test set.

The target's sessions are split once (by time where the set has times, else a seeded shuffle): the
first `pool_fraction` is the unlabelled adaptation pool, the rest the test set. Sources are the other
*systems* (never a dataset of the target's own system). Labels of the pool and the test set are
removed before any method sees them; `check_context` refuses to run a method otherwise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import eval.fusion_methods  # noqa: F401  (registers llm-only and fusionlog)
from eval.checkpoints import Checkpoints, SeedResult
from eval.methods import METHODS, MethodOptions, MethodOutput, TargetContext
from eval.metrics import binary_metrics, prf
from fusionlog.config import register_config_type
from fusionlog.data import check_pool_size, hide_labels, split_sessions, system_of
from fusionlog.detector import SystemSessions, embed_anchors
from fusionlog.errors import ConfigError
from fusionlog.training.data import assert_labelled, assert_unlabelled

logger = logging.getLogger(__name__)

#: One labelled dataset per system, the default sources (hdfs rather than hdfs-100k for HDFS).
DEFAULT_SOURCES: tuple[str, ...] = ("hdfs", "openstack", "hadoop", "bgl")

#: Labelled targets of the benchmark.
TARGETS: tuple[str, ...] = ("openstack", "hdfs", "hadoop", "hdfs-100k", "bgl")

#: Best F1 any model that sees only template sequences can reach (shared/data/README.md).
SEQUENCE_CEILINGS: dict[str, float | None] = {
    "openstack": 1.00,
    "hdfs": 1.00,
    "hdfs-100k": 0.67,
    "hadoop": 0.93,
    "bgl": None,
}

#: Caveats printed beside a target's figures.
TARGET_NOTES: dict[str, str] = {
    "bgl": "tiny: 100 windows of 20 raw lines (BGL_2k), so the test set has 40 windows; figures are noisy",
    "hadoop": "anomalies are the majority (811 of 961); predicting all-anomalous already gives F1 ~0.91",
    "hdfs-100k": "blocks cut at line 100k while labels come from the full log: ceiling 0.67",
    "hdfs": "anomalies sampled to HDFS_v1's natural rate (2.93%) with a fixed seed",
}

METRIC_KEYS = ("precision", "recall", "f1", "roc_auc", "pr_auc")


@register_config_type
@dataclass(frozen=True)
class EvalConfig:
    target: str
    sources: tuple[str, ...] | None = None  # None = DEFAULT_SOURCES minus the target's system
    methods: tuple[str, ...] = ("unseen-template", "rarity", "surprise", "source-only", "general")
    seeds: tuple[int, ...] = (0, 1, 2)
    pool_fraction: float = 0.6
    split_seed: int = 0
    threshold_rule: str | None = None
    device: str = "cpu"
    train_overrides: dict = field(default_factory=dict)
    route: bool = True  # split the test set with the semantic router and report per-part metrics
    llm: dict = field(default_factory=dict)  # MethodOptions llm fields (llm, llm_backend, llm_budget, rounds, ...)
    model_overrides: dict = field(default_factory=dict)  # SessionModelConfig fields of the trained methods

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
        if not self.seeds:
            raise ConfigError("EvalConfig.seeds: give at least one seed")


def default_sources(target: str) -> list[str]:
    system = system_of(target)
    return [s for s in DEFAULT_SOURCES if system_of(s) != system]


def prepared_dir_loader(root: Path):
    """A loader that reads already-prepared folders under `root` by dataset name and never re-prepares.

    For machines without the raw data or the embedding model (a GPU box): copy the prepared folders.
    """
    from fusionlog.errors import DataError
    from fusionlog.prepare import load_prepared, newest_prepared

    root = Path(root)

    def load(name: str):
        folder = newest_prepared(root, name)
        if folder is None:
            raise DataError(f"no prepared folder for {name!r} under {root} (run `fusionlog prepare {name}`)")
        return load_prepared(folder)

    return load


def build_context(
    cfg: EvalConfig,
    data_dir=None,
    cache_root: Path | None = None,
    progress: bool = False,
    embedder=None,
    loader=None,
    anchor_vectors: np.ndarray | None = None,
) -> tuple[TargetContext, np.ndarray, dict]:
    """(context with every target label hidden, test labels kept apart, split summary).

    `loader(name) -> PreparedDataset` replaces `fusionlog.prepare.prepare` (see `prepared_dir_loader`);
    `anchor_vectors` replaces embedding the anchor phrases (for machines without the embedder).
    """
    if loader is None:
        from fusionlog.prepare import prepare

        def loader(name: str):
            return prepare(name, data_dir, embedder=embedder, root=cache_root, progress=progress)

    sources = list(cfg.sources) if cfg.sources else default_sources(cfg.target)
    system = system_of(cfg.target)
    clash = [s for s in sources if system_of(s) == system]
    if clash:
        raise ConfigError(f"sources {clash} share the target's system {system!r}: pick other systems")
    if not sources:
        raise ConfigError(f"no source systems left for target {cfg.target!r}")
    target = loader(cfg.target)
    if not target.dataset.labelled:
        raise ConfigError(f"target {cfg.target!r} has no labels: nothing to evaluate against")
    split = split_sessions(target.dataset, cfg.pool_fraction, cfg.split_seed)
    check_pool_size(len(split.pool), len(target.dataset.sessions), cfg.target)
    test_labels = np.array([s.label for s in split.test], dtype=np.int64)
    if not test_labels.any():
        raise ConfigError(
            f"target {cfg.target!r}: its test part ({len(test_labels)} sessions) holds no anomalous session, so "
            f"recall, F1 and ROC-AUC cannot be measured; evaluate a target with labelled anomalies (to train a "
            f"detector for it anyway: fusionlog fuse --target {cfg.target})")
    src = []
    for name in sources:
        p = loader(name)
        assert_labelled(p.dataset.sessions, f"source {name}")
        src.append(SystemSessions.from_prepared(p))
    ctx = TargetContext(
        cfg.target,
        target.dataset.system,
        src,
        SystemSessions.from_prepared(target, hide_labels(split.pool)),
        hide_labels(split.test),
        anchor_vectors if anchor_vectors is not None else embed_anchors(embedder),
    )
    summary = split.summary()
    summary["split_note"] = target.dataset.split_note or target.dataset.description
    return ctx, test_labels, summary


def route_test(ctx: TargetContext) -> tuple[np.ndarray, dict]:
    """Per test session "general" or "proprietary", from the training-free router (no labels read).

    IDF weights come from the unlabelled pool, so test sessions influence nothing but their own route.
    """
    from eval.fusion_methods import source_router, target_dataset

    router = source_router(ctx)
    res = router.split(target_dataset(ctx, ctx.pool.sessions), ctx.pool.vectors, sessions=ctx.test,
                       idf_sessions=ctx.pool.sessions)
    parts = np.where(np.asarray(res.general_mask, dtype=bool), "general", "proprietary")
    return parts, res.summary()


def check_context(ctx: TargetContext) -> None:
    """Refuse to run if any target label is reachable from what methods receive."""
    assert_unlabelled(ctx.pool.sessions, f"target {ctx.target} adaptation pool")
    assert_unlabelled(ctx.test, f"target {ctx.target} test sessions given to methods")
    clash = [s.name for s in ctx.sources if s.system == ctx.system]
    if clash:
        raise ConfigError(f"sources {clash} share the target's system {ctx.system!r}")


def run_method(name: str, ctx: TargetContext, seed: int, options: MethodOptions) -> MethodOutput:
    """The one door to a method: the label check runs first, every time."""
    check_context(ctx)
    out = METHODS[name].fn(ctx, seed, options)
    if len(out.scores) != len(ctx.test):
        raise ConfigError(f"method {name}: {len(out.scores)} scores for {len(ctx.test)} test sessions")
    return out


@dataclass
class SeedRun:
    seed: int
    output: MethodOutput
    metrics: dict


def seed_entry(run: SeedRun, labels: np.ndarray) -> dict:
    """One element of results.json's `seeds` list (metrics + seed + threshold + method extras)."""
    out = run.output
    entry = {"seed": run.seed, "threshold": float(out.threshold), **run.metrics,
             "train_seconds": round(out.train_seconds, 3), "score_seconds": round(out.score_seconds, 4)}
    if out.parts is not None:
        entry["parts"] = part_metrics(labels, out.scores, out.threshold, out.parts)
    if out.stages:
        entry["stages"] = [{k: round(float(v), 4) for k, v in binary_metrics(labels, s, t).items()}
                           for s, t in out.stages]
    for k, v in out.extra.items():
        entry.setdefault(k, v)
    return entry


def part_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float, parts: np.ndarray) -> dict:
    """Precision/recall/F1 within each routed part (e.g. general vs proprietary sessions)."""
    res = {}
    parts = np.asarray(parts)
    for name in sorted({str(p) for p in parts}):
        m = parts == name
        p, r, f = prf(labels[m], np.asarray(scores)[m] > threshold)
        res[name] = {"sessions": int(m.sum()), "anomalies": int(labels[m].sum()), "precision": p, "recall": r,
                     "f1": f}
    return res


def summarise(entries: list[dict], ceiling: float | None) -> dict:
    """Means over seeds (+ f1_std) in results.json's method shape, seeds kept underneath."""

    def mean(key: str) -> float:
        vals = [e[key] for e in entries if e.get(key) is not None and np.isfinite(e[key])]
        return float(np.mean(vals)) if vals else float("nan")

    summary = {k: mean(k) for k in METRIC_KEYS}
    summary["f1_std"] = float(np.std([e["f1"] for e in entries])) if entries else float("nan")
    summary["train_seconds"] = mean("train_seconds")
    summary["score_seconds"] = mean("score_seconds")
    summary["sequence_ceiling"] = ceiling
    if ceiling is not None:
        summary["f1_gap_to_ceiling"] = round(ceiling - summary["f1"], 4)
    rules = {e.get("threshold_rule") for e in entries if e.get("threshold_rule")}
    if rules:
        summary["threshold_rule"] = ", ".join(sorted(rules))
    if any("parts" in e for e in entries):
        names = sorted({n for e in entries for n in e.get("parts", {})})
        summary["parts"] = {
            n: {k: float(np.mean([e["parts"][n][k] for e in entries if n in e.get("parts", {})]))
                for k in ("precision", "recall", "f1", "sessions")}
            for n in names
        }
    summary["seeds"] = entries
    return summary


@dataclass
class EvalRun:
    """Results plus what the plots need (scores of the first seed of each method)."""

    results: dict
    labels: np.ndarray
    curves: dict[str, np.ndarray] = field(default_factory=dict)  # first seed's test scores per method
    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)  # every seed's test scores per method
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # "{method}/seed{n}/{name}" diagnostics


def run_eval(
    cfg: EvalConfig,
    data_dir=None,
    cache_root: Path | None = None,
    progress: bool = False,
    embedder=None,
    loader=None,
    anchor_vectors: np.ndarray | None = None,
    checkpoints: Checkpoints | None = None,
    resume: bool = False,
) -> EvalRun:
    """`checkpoints`: where each (method, seed) result is saved as it finishes; with `resume`, finished ones
    of the same settings are read back instead of run again (`eval.checkpoints`)."""
    t0 = time.perf_counter()
    ctx, labels, split = build_context(cfg, data_dir, cache_root, progress, embedder, loader, anchor_vectors)
    options = MethodOptions(dict(cfg.train_overrides), cfg.threshold_rule, cfg.device, **cfg.llm,
                            model_overrides=dict(cfg.model_overrides))
    ceiling = SEQUENCE_CEILINGS.get(cfg.target)
    parts, route_summary = route_test(ctx) if cfg.route else (None, None)
    methods: dict[str, dict] = {}
    curves: dict[str, np.ndarray] = {}
    all_scores: dict[str, list[np.ndarray]] = {}
    arrays: dict[str, np.ndarray] = {}
    if checkpoints is not None and not resume and (n := checkpoints.finished()):
        logger.info("%d finished (method, seed) results of these settings are in %s; --resume reuses them",
                    n, checkpoints.root)
    for name in cfg.methods:
        entries = []
        for seed in cfg.seeds:
            done = checkpoints.load(name, seed) if (checkpoints is not None and resume) else None
            if done is None:
                done = _run_seed(name, ctx, seed, options, labels, parts)
                if checkpoints is not None:
                    checkpoints.save(name, seed, done)
                logger.info("%s %s seed %d: f1 %.3f roc_auc %.3f (%.1fs train)", cfg.target, name, seed,
                            done.entry["f1"], done.entry["roc_auc"], done.entry["train_seconds"])
            else:
                logger.info("%s %s seed %d: f1 %.3f, reused from %s", cfg.target, name, seed, done.entry["f1"],
                            checkpoints.root)
            entries.append(done.entry)
            curves.setdefault(name, np.asarray(done.scores, dtype=np.float64))
            all_scores.setdefault(name, []).append(np.asarray(done.scores, dtype=np.float32))
            arrays |= {f"{name}/seed{seed}/{k}": np.asarray(v) for k, v in done.arrays.items()}
        methods[name] = summarise(entries, ceiling)
    results = {
        "target": cfg.target,
        "sources": [s.name for s in ctx.sources],
        "split": {k: split[k] for k in ("pool_sessions", "test_sessions", "test_anomalies", "method")},
        "sequence_ceiling": ceiling,
        "notes": [TARGET_NOTES[cfg.target]] if cfg.target in TARGET_NOTES else [],
        "config": _jsonable(asdict(cfg)),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "router": route_summary,
        "methods": methods,
    }
    return EvalRun(results, labels, curves, all_scores, arrays)


def _run_seed(name: str, ctx, seed: int, options, labels: np.ndarray, parts) -> SeedResult:
    out = run_method(name, ctx, seed, options)
    if out.parts is None and parts is not None:
        out.parts = parts
    metrics = binary_metrics(labels, out.scores, out.threshold)
    arrays = {k: np.asarray(v) for k, v in out.arrays.items()}
    return SeedResult(seed_entry(SeedRun(seed, out, metrics), labels), np.asarray(out.scores), arrays)


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
