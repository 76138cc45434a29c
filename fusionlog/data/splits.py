"""Adaptation-pool / test split: chronological where sessions have times, else a seeded shuffle.

Why not file order: several sets are grouped by label (all normal, then all abnormal) or sorted by id,
so a prefix split would put every anomaly in the test set. Every report carries `SplitResult.method`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fusionlog.errors import ConfigError
from fusionlog.types import Session, SessionDataset


@dataclass
class SplitResult:
    pool: list[Session]  # unlabelled adaptation pool (labels must be hidden before training sees it)
    test: list[Session]
    method: str  # "time" or "shuffle(seed=N)"

    def summary(self) -> dict:
        return {
            "pool_sessions": len(self.pool),
            "test_sessions": len(self.test),
            "test_anomalies": sum(1 for s in self.test if s.label == 1),
            "method": self.method,
        }


def split_sessions(dataset: SessionDataset, pool_fraction: float = 0.6, seed: int = 0) -> SplitResult:
    if not 0.0 < pool_fraction < 1.0:
        raise ConfigError(f"pool_fraction={pool_fraction}: must be in (0, 1)")
    sessions = list(dataset.sessions)
    if dataset.time_ordered and all(s.start is not None for s in sessions):
        sessions.sort(key=lambda s: (s.start, s.key))
        method = "time"
    else:
        random.Random(seed).shuffle(sessions)
        method = f"shuffle(seed={seed})"
    cut = int(round(len(sessions) * pool_fraction))
    return SplitResult(sessions[:cut], sessions[cut:], method)


def hide_labels(sessions: list[Session]) -> list[Session]:
    """Copies with label=None: what the adaptation pool looks like to every training component."""
    return [Session(s.system, s.key, s.event_ids, None, s.start, s.end) for s in sessions]
