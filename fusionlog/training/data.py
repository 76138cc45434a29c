"""What the trainers consume: one `SystemData` per system, encoded once, plus the label guard.

A source system carries labels; the target's adaptation pool must not. `assert_unlabelled` is the
single check every entry point (trainer, detector, eval harness) runs on target data before using it,
so a target label can never reach training, early stopping, model selection or the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fusionlog.errors import DataError
from fusionlog.model import EncodedSessions, ReferenceStats, encode_sessions
from fusionlog.types import Session


class LabelLeakError(DataError):
    """Target labels were found in data meant to be unlabelled (the adaptation pool)."""


def assert_unlabelled(sessions: Sequence[Session], what: str = "target adaptation pool") -> None:
    """Raise `LabelLeakError` if any session carries a label; hide labels first with `hide_labels`."""
    leaked = sum(1 for s in sessions if s.label is not None)
    if leaked:
        raise LabelLeakError(
            f"{what}: {leaked} of {len(sessions)} sessions carry a label; target labels must never reach "
            f"training (use fusionlog.data.hide_labels)"
        )


def assert_labelled(sessions: Sequence[Session], what: str) -> None:
    missing = sum(1 for s in sessions if s.label is None)
    if missing:
        raise DataError(f"{what}: {missing} of {len(sessions)} sessions have no label; sources must be labelled")


@dataclass
class SystemData:
    """One system's encoded sessions and its template vectors (as a tensor on the training device)."""

    name: str
    encoded: EncodedSessions
    vectors: torch.Tensor  # (n_templates, dim)
    stats: ReferenceStats

    @property
    def system(self) -> str:
        return self.encoded.system

    @classmethod
    def build(
        cls,
        name: str,
        system: str,
        vectors: np.ndarray,
        sessions: Sequence[Session],
        max_len: int,
        labelled: bool,
        device: str | torch.device = "cpu",
        trim: bool = False,
    ) -> SystemData:
        """Reference stats come from these same sessions (leave-one-out), labels or not; with `trim`, from those
        within 1 unit of surprise (`ReferenceStats.trimmed`), as the target's pool is counted."""
        if labelled:
            assert_labelled(sessions, f"source {name}")
        else:
            assert_unlabelled(sessions, f"target {name} adaptation pool")
        if not sessions:
            raise DataError(f"{name}: no sessions")
        stats = ReferenceStats.from_sessions(sessions, len(vectors), trim=trim)
        enc = encode_sessions(sessions, stats, max_len, in_corpus=True, system=system)
        return cls(name, enc, torch.as_tensor(np.asarray(vectors, dtype=np.float32), device=device), stats)


@dataclass
class Sampler:
    """Draws groups of one system with prob ~ count**power; class weights make each class half the loss.

    Why count**power: deduplicated groups carry counts in the thousands (one normal OpenStack sequence
    covers most sessions); power 1 reproduces the data, 0.5 shows the model more distinct sequences.
    """

    groups: np.ndarray  # (G,) group ids into the SystemData's encoded sessions
    probs: np.ndarray  # (G,) sampling probability
    class_weight: dict[int, float]

    @classmethod
    def build(
        cls, enc: EncodedSessions, groups: np.ndarray, power: float, class_weighting: bool, labelled: bool
    ) -> Sampler:
        mass = enc.counts[groups].astype(np.float64) ** power
        probs = mass / mass.sum()
        weights = {0: 1.0, 1: 1.0}
        if labelled and class_weighting:
            labels = enc.labels[groups]
            for c in (0, 1):
                share = float(probs[labels == c].sum())
                if 0.0 < share < 1.0:
                    weights[c] = 0.5 / share
        return cls(np.asarray(groups), probs, weights)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(self.groups, size=n, replace=True, p=self.probs)


def split_groups(
    enc: EncodedSessions, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out share of distinct groups per class (stratified), so validation sees unseen sequences.

    A class with fewer than 2 groups stays entirely in training.
    """
    train, val = [], []
    for c in (0.0, 1.0):
        idx = np.flatnonzero(enc.labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction)) if len(idx) >= 2 else 0
        n_val = min(n_val, len(idx) - 1) if len(idx) else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
