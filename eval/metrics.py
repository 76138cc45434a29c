"""Metrics of the anomalous class: precision, recall, F1, ROC-AUC, PR-AUC (numpy only).

ROC-AUC is the Mann-Whitney statistic with ties counted half; PR-AUC is average precision (the step
sum sklearn uses), so both agree with sklearn to float precision without depending on it.
"""

from __future__ import annotations

import numpy as np


def prf(labels: np.ndarray, predictions: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall, F1 of class 1; 0 where undefined (no predicted or no true anomalies)."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(predictions).astype(bool)
    tp = float(np.sum(y & p))
    fp = float(np.sum(~y & p))
    fn = float(np.sum(y & ~p))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random anomaly outscores a random normal session (ties = 1/2); NaN if one class."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(sorted_s[1:] != sorted_s[:-1]) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """PR-AUC as average precision: sum over thresholds of (R_k - R_{k-1}) * P_k; NaN without anomalies."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return float("nan")
    precision, recall, _ = pr_curve(y, s)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _cumulative_counts(labels: np.ndarray, scores: np.ndarray):
    """(y, tp, fp, thresholds): true/false positives when cutting at each distinct score, highest first."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1 - tp).astype(np.float64)
    return y, tp, fp, s[last]


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at each distinct score, from the highest down."""
    y, tp, fp, thresholds = _cumulative_counts(labels, scores)
    precision = tp / np.maximum(tp + fp, 1e-12)
    recall = tp / max(float(y.sum()), 1e-12)
    return precision, recall, thresholds


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) from (0, 0) to (1, 1), one point per distinct score."""
    y, tp, fp, _ = _cumulative_counts(labels, scores)
    tpr = np.r_[0.0, tp / max(float(y.sum()), 1e-12)]
    fpr = np.r_[0.0, fp / max(float((~y).sum()), 1e-12)]
    return fpr, tpr


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """All five figures for one run: verdicts are `scores > threshold`."""
    precision, recall, f1 = prf(labels, np.asarray(scores) > threshold)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc(labels, scores),
        "pr_auc": average_precision(labels, scores),
    }
