"""Platt scaling of P(anomalous), fit on held-out SOURCE sessions only (never on the target).

Why: the small models' raw probabilities are biased (MODELS.md: Qwen 0.5B gives ~0.3 to normal and
~0.6 to anomalous HDFS blocks), so 0.5 is the wrong cut. A two-parameter logistic map
p' = sigmoid(a * logit(p) + b), fit on labelled source sessions, moves the cut and sharpens or
softens confidence without touching the ranking. Saved as plain JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fusionlog.errors import ArtifactError, ConfigError
from fusionlog.io import atomic_write_json

CALIBRATION_NAME = "calibration.json"
_EPS = 1e-6


@dataclass(frozen=True)
class PlattCalibration:
    a: float = 1.0
    b: float = 0.0
    n: int = 0  # sessions it was fit on
    fit_on: str = "source"  # provenance for reports; never "target"

    def apply(self, p: float) -> float:
        t = self.a * _logit(p) + self.b
        if t >= 0:  # numerically stable sigmoid for large |t|
            return 1.0 / (1.0 + math.exp(-t))
        e = math.exp(t)
        return e / (1.0 + e)

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path), {"method": "platt", **asdict(self)})

    @classmethod
    def load(cls, path: Path) -> PlattCalibration:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: cannot read calibration: {exc}") from exc
        if d.get("method") != "platt":
            raise ArtifactError(f"{path}: unknown calibration method {d.get('method')!r}")
        return cls(float(d["a"]), float(d["b"]), int(d.get("n", 0)), str(d.get("fit_on", "source")))


def fit_platt(probs: np.ndarray, labels: np.ndarray, l2: float = 0.05, iters: int = 100) -> PlattCalibration:
    """Damped Newton on the logistic loss over z = logit(p), with an L2 pull of `a` towards 1.

    The pull and the step halving keep the fit finite when a handful of held-out sessions separate
    perfectly (plain Newton then runs `a` off to hundreds and every output saturates at 0 or 1).
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if probs.shape != y.shape or probs.size < 2 or len(set(y.tolist())) < 2:
        raise ConfigError("fit_platt: needs >= 2 held-out source sessions with both labels")
    z = np.log(np.clip(probs, _EPS, 1 - _EPS) / np.clip(1 - probs, _EPS, 1 - _EPS))
    x = np.stack([z, np.ones_like(z)], axis=1)
    prior = np.array([1.0, 0.0])
    reg = np.diag([l2, 0.0]) * len(y)

    def loss(w: np.ndarray) -> float:
        t = x @ w
        return float(np.sum(np.logaddexp(0.0, t) - y * t) + 0.5 * (w - prior) @ reg @ (w - prior))

    w = prior.copy()
    current = loss(w)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -500, 500)))
        grad = x.T @ (p - y) + reg @ (w - prior)
        hess = (x.T * (p * (1 - p))) @ x + reg + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6 and loss(w - scale * step) > current:
            scale /= 2
        w_new = w - scale * step
        new = loss(w_new)
        if current - new < 1e-10:
            break
        w, current = w_new, new
    return PlattCalibration(float(w[0]), float(w[1]), int(y.size))


def _logit(p: float) -> float:
    p = min(max(float(p), _EPS), 1 - _EPS)
    return math.log(p / (1 - p))
