"""Adaptation-pool / test split: chronological where sessions have times, else a seeded shuffle.

Why not file order: several sets are grouped by label (all normal, then all abnormal) or sorted by id,
so a prefix split would put every anomaly in the test set. Every report carries `SplitResult.method`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fusionlog.errors import ConfigError, DataError
from fusionlog.types import Session, SessionDataset

#: Fewest target sessions the model may learn the target's everyday behaviour from. Why: every label-free
#: signal here is "unusual against the pool"; with a handful of sessions every session is unusual and the
#: detector would flag everything after minutes of training (30 Zookeeper lines in 10-line windows did).
MIN_POOL_SESSIONS = 10


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


def check_pool_size(n_pool: int, n_sessions: int, target: str) -> None:
    """Refuse, before any training, a target with too few sessions to say what is everyday on it."""
    if n_pool < MIN_POOL_SESSIONS:
        raise DataError(
            f"{target}: only {n_pool} target session(s) to learn this system's everyday behaviour from "
            f"({n_sessions} in all); at least {MIN_POOL_SESSIONS} are needed. Give more log lines, or cut "
            f"them into more, shorter sessions (--window N lines or --seconds S)."
        )
