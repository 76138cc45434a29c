"""Label-free decision thresholds (pyod's `_process_decision_scores` idea, without target labels).

A threshold turns scores (higher = more anomalous) into verdicts. In the zero-label setting no target
label may pick it, so every rule here reads only one of:

* ``fixed``         - a constant (logit 0 = posterior 0.5 under class-balanced training);
* ``source-f1``     - held-out *source* data: the F1-best threshold of each source system, median;
* ``pool-otsu``     - the target's unlabelled pool scores: Otsu's split of their histogram;
* ``pool-quantile`` - the target's unlabelled pool scores: flag the top `contamination` share;
* ``pool-otsu-distinct`` - Otsu's split over the pool's *distinct* model inputs, each counted once;
* ``pool-surprise`` - the target's unlabelled pool: the cut on the scores that best agrees with "surprise
  above 1 unit" (`fusionlog.model.ReferenceStats.surprise`) over the pool's sessions.

Why the distinct variant: the model's rarity features already say how common a behaviour is, so counting
each session again in the threshold lets one dominant normal behaviour (half of all HDFS blocks) set the
split - Otsu then separates "the commonest behaviour" from "everything else" and flags 30% of a pool
that is 3% anomalous. Over distinct behaviours the split falls between the ordinary behaviours and the
rare ones. Pool scores passed to it must be one per distinct input (`Detector` and the rounds do that).

Why the surprise variant: a score's *ranking* is learned, but where to cut it has no label to learn
from. Surprise has a unit that means the same in every system (one never-seen template's worth of
departure from the pool), so "more than one unit" is an a-priori cut. It pseudo-labels the pool, and the
model's threshold is the one whose verdicts agree best with those pseudo-labels (F1 over pool sessions):
the model keeps its own ranking and borrows only the cut. A pool with no normal side (every session above
1 unit: Hadoop's applications, BGL's 60 windows) gives nothing to cut against, so the cut falls to the
lowest score a 1-unit session can get (`SessionModel.unit_floor`): everything above 1 unit is flagged.

Each rule returns a `ThresholdResult` that says which rule and which data set it, for reports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fusionlog.errors import ConfigError

logger = logging.getLogger(__name__)

THRESHOLD_RULES = ("fixed", "source-f1", "pool-otsu", "pool-quantile", "pool-otsu-distinct", "pool-surprise")
#: best mean F1 on the pseudo-targets (eval.select): the default of the detector and the main job
DEFAULT_THRESHOLD_RULE = "pool-surprise"
#: rules that read the target pool's scores
POOL_RULES = ("pool-otsu", "pool-quantile", "pool-otsu-distinct", "pool-surprise")


@dataclass
class ThresholdResult:
    value: float
    rule: str
    source: str  # which data set it: "constant", "held-out source data", "target pool scores (unlabelled)"
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"value": float(self.value), "rule": self.rule, "source": self.source, "details": self.details}

    @classmethod
    def from_dict(cls, d: dict) -> ThresholdResult:
        return cls(float(d["value"]), str(d["rule"]), str(d.get("source", "")), dict(d.get("details", {})))


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """(threshold, F1) maximising the weighted F1 of `scores > threshold`; midpoints between scores."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    w = np.ones_like(scores) if weights is None else np.asarray(weights, dtype=np.float64)
    if not labels.any() or labels.all():
        return float("nan"), float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y, w = scores[order], labels[order], w[order]
    tp = np.cumsum(w * y)
    fp = np.cumsum(w * ~y)
    pos = tp[-1]
    last = np.r_[s[1:] != s[:-1], True]  # cut only between distinct scores
    f1 = np.where(last, 2 * tp / np.maximum(tp + fp + pos, 1e-12), -1.0)
    i = int(np.argmax(f1))
    thr = (s[i] + s[i + 1]) / 2 if i + 1 < len(s) else s[i] - 1e-6
    return float(thr), float(f1[i])


def otsu_threshold(scores: np.ndarray, weights: np.ndarray | None = None, bins: int = 256) -> float:
    """Otsu's method: the cut that maximises between-class variance of the score histogram."""
    scores = np.asarray(scores, dtype=np.float64)
    w = np.ones_like(scores) if weights is None else np.asarray(weights, dtype=np.float64)
    lo, hi = float(scores.min()), float(scores.max())
    if hi - lo < 1e-12:
        return hi  # one score value: nothing is above it
    hist, edges = np.histogram(scores, bins=bins, range=(lo, hi), weights=w)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    between[(w0 <= 0) | (w1 <= 0)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def quantile_threshold(scores: np.ndarray, contamination: float, weights: np.ndarray | None = None) -> float:
    """Score above which the top `contamination` share of (weighted) sessions lies."""
    if not 0.0 < contamination < 1.0:
        raise ConfigError(f"contamination={contamination}: must be in (0, 1)")
    scores = np.asarray(scores, dtype=np.float64)
    w = np.ones_like(scores) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(scores)
    cum = np.cumsum(w[order]) / w.sum()
    i = int(np.searchsorted(cum, 1.0 - contamination))
    return float(scores[order][min(i, len(scores) - 1)])


def agreement_threshold(scores: np.ndarray, pseudo: np.ndarray, weights: np.ndarray | None = None,
                        positive_floor: float | None = None) -> float:
    """The cut on `scores` whose verdicts best agree (weighted F1) with boolean pseudo-labels.

    All pseudo-labels positive: just under the pool's lowest score (every pool input flagged), or at
    `positive_floor` where that is lower: the lowest score a session the pseudo-labels would call positive
    can get (`SessionModel.unit_floor`), so a new session the rule calls positive is flagged even when it
    scores under the whole pool. A cut at -inf would flag everything but leaves the rounds no graded
    small-model probability (sigmoid of score minus threshold). None positive: the pool's top score (only
    what departs more than all of the pool is flagged).
    """
    scores = np.asarray(scores, dtype=np.float64)
    pseudo = np.asarray(pseudo, dtype=bool)
    if pseudo.all():
        under_pool = float(scores.min()) - 1e-6
        return under_pool if positive_floor is None else min(under_pool, float(positive_floor))
    if not pseudo.any():
        return float(scores.max())
    return best_f1_threshold(scores, pseudo, weights)[0]


def choose_threshold(
    rule: str,
    *,
    pool_scores: np.ndarray | None = None,
    pool_weights: np.ndarray | None = None,
    pool_surprising: np.ndarray | None = None,
    source_validation: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = (),
    value: float = 0.0,
    contamination: float = 0.05,
    unit_floor: float | None = None,
) -> ThresholdResult:
    """Apply one label-free rule. `source_validation` holds (system, scores, labels, weights) per source;
    `pool_surprising` is True where a pool score's input has surprise above 1 unit (for `pool-surprise`);
    `unit_floor` is the lowest score a session at 1 unit can get (`SessionModel.unit_floor`; `pool-surprise`
    cuts there when every pool input is above 1 unit)."""
    if rule == "fixed":
        return ThresholdResult(value, rule, "constant")
    if rule == "source-f1":
        per = {}
        for system, scores, labels, weights in source_validation:
            thr, f1 = best_f1_threshold(scores, labels, weights)
            if np.isfinite(thr):
                per[system] = {"threshold": round(thr, 5), "f1": round(f1, 4)}
        if not per:
            raise ConfigError("threshold rule 'source-f1' needs held-out source data with both classes")
        med = float(np.median([v["threshold"] for v in per.values()]))
        return ThresholdResult(med, rule, "held-out source data", {"per_system": per})
    if rule in POOL_RULES:
        if pool_scores is None or len(pool_scores) == 0:
            raise ConfigError(f"threshold rule {rule!r} needs the target's unlabelled pool scores")
        if rule == "pool-otsu":
            thr = otsu_threshold(pool_scores, pool_weights)
            details: dict = {}
        elif rule == "pool-otsu-distinct":
            thr = otsu_threshold(pool_scores)  # one vote per distinct input: the counts are ignored on purpose
            details = {"distinct_inputs": len(pool_scores)}
        elif rule == "pool-surprise":
            if pool_surprising is None or len(pool_surprising) != len(pool_scores):
                raise ConfigError("threshold rule 'pool-surprise' needs one surprise verdict per pool score")
            thr = agreement_threshold(pool_scores, pool_surprising, pool_weights, unit_floor)
            w = np.ones(len(pool_scores)) if pool_weights is None else np.asarray(pool_weights, dtype=np.float64)
            details = {"pool_surprising_share": round(float(w[np.asarray(pool_surprising, bool)].sum() / w.sum()), 4)}
            if np.asarray(pool_surprising, bool).all():
                details["cut"] = "1-unit floor" if thr < float(np.min(pool_scores)) - 1e-6 else "under the pool"
                logger.warning("every pool session departs from the others by more than 1 unit of surprise: no "
                               "session is a normal reference, so everything above 1 unit is flagged (too small or "
                               "too diverse a pool for this rule; consider another --threshold rule)")
        else:
            thr = quantile_threshold(pool_scores, contamination, pool_weights)
            details = {"contamination": contamination}
        w = np.ones(len(pool_scores)) if pool_weights is None else np.asarray(pool_weights, dtype=np.float64)
        details["pool_flagged_share"] = round(float(w[np.asarray(pool_scores) > thr].sum() / w.sum()), 4)
        return ThresholdResult(thr, rule, "target pool scores (unlabelled)", details)
    raise ConfigError(f"threshold rule {rule!r}: must be one of {THRESHOLD_RULES}")
