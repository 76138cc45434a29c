"""Label quality of verdicts against hidden labels: for REPORTING only, never fed back to training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from distill.verdicts import Verdict


def prf(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """Precision, recall, F1 of the anomalous class (0 when undefined, as sklearn's zero_division=0)."""
    t = np.asarray(y_true, dtype=int)
    p = np.asarray(y_pred, dtype=int)
    tp = int(((t == 1) & (p == 1)).sum())
    fp = int(((t == 0) & (p == 1)).sum())
    fn = int(((t == 1) & (p == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "tp": tp, "fp": fp, "fn": fn, "tn": int(((t == 0) & (p == 0)).sum())}


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float | None:
    """Mann-Whitney AUC with tie handling; None when one class is absent."""
    y = np.asarray(y_true, dtype=int)
    s = np.asarray(scores, dtype=float)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return round(float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)), 4)


def label_quality(verdicts: Sequence[Verdict], truth: Mapping[str, int]) -> dict:
    """Session-level (every member of a group counts) and sequence-level (one vote per distinct
    sequence, majority true label) quality; abstentions are excluded and counted."""
    answered = [v for v in verdicts if not v.abstained and v.key in truth]
    out: dict = {"sessions_scored": len(answered), "abstained": sum(v.abstained for v in verdicts)}
    if not answered:
        return out
    y = [int(truth[v.key]) for v in answered]
    out["sessions"] = dict(prf(y, [int(v.label) for v in answered]), roc_auc=roc_auc(y, [v.prob for v in answered]),
                           anomalous=int(sum(y)))
    seq: dict[str, list] = {}
    for v in answered:
        seq.setdefault(v.sequence_id, [v, []])[1].append(int(truth[v.key]))
    ys = [int(sum(t) * 2 >= len(t)) for _, t in seq.values()]
    vs = [v for v, _ in seq.values()]
    out["sequences"] = dict(prf(ys, [int(v.label) for v in vs]), roc_auc=roc_auc(ys, [v.prob for v in vs]),
                            count=len(vs), anomalous=int(sum(ys)))
    return out
