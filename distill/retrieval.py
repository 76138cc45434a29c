"""Few-shot examples: the labeller asks `examples_for(session) -> list[Example]`.

`router_examples` is the real one: k nearest labelled source sessions through the router's FAISS index
(used by `fusionlog label` and the main job). The labeller only sees the callable. `MeanVectorRetriever` does
exact cosine search with numpy over labelled SOURCE sessions (never target labels), each session
represented by the normalised mean of its distinct templates' vectors in the shared space (distinct,
so a template repeated 200 times does not drown the rare error line).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from distill.render import Example
from fusionlog.errors import ConfigError
from fusionlog.types import Session

ExamplesFor = Callable[[Session], list[Example]]


def session_vector(event_ids: Sequence[int], vectors: np.ndarray) -> np.ndarray:
    """(dim,) unit vector: mean of the distinct templates' vectors; zeros when none is known."""
    ids = [e for e in dict.fromkeys(event_ids) if 0 <= e < len(vectors)]
    if not ids:
        return np.zeros(vectors.shape[1], dtype=np.float32)
    v = vectors[ids].mean(axis=0)
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 else v.astype(np.float32)


@dataclass(frozen=True)
class _Entry:
    system: str
    key: str
    templates: tuple[str, ...]
    label: int


class MeanVectorRetriever:
    """fit(labelled source datasets) → bind(target vectors) → examples_for(session).

    balanced=True returns the nearest sessions of each label (ceil(k/2) anomalous, the rest normal):
    a small model copies the label of a lone nearest example, and sources are mostly normal, so a
    contrasting pair is more informative than the k nearest of one class.
    """

    def __init__(self, k: int = 2, balanced: bool = True, max_per_source: int = 5000, seed: int = 0) -> None:
        if k < 0:
            raise ConfigError(f"MeanVectorRetriever.k={k}: must be >= 0")
        self.k = k
        self.balanced = balanced
        self.max_per_source = max_per_source
        self.seed = seed
        self.entries_: list[_Entry] = []
        self.matrix_: np.ndarray | None = None

    def fit(self, sources: Sequence[object]) -> MeanVectorRetriever:
        """`sources`: PreparedDataset-like objects (`.dataset` with labelled sessions, `.vectors`)."""
        entries, rows = [], []
        for prepared in sources:
            ds, vecs = prepared.dataset, prepared.vectors
            groups: dict[tuple[int, ...], list[Session]] = {}
            for s in ds.sessions:
                if s.label is not None:
                    groups.setdefault(tuple(s.event_ids), []).append(s)
            seqs = sorted(groups)
            if len(seqs) > self.max_per_source:
                seqs = random.Random(self.seed).sample(seqs, self.max_per_source)
            for seq in seqs:
                members = groups[seq]
                label = Counter(m.label for m in members).most_common(1)[0][0]
                entries.append(_Entry(ds.system, members[0].key, tuple(ds.templates[e] for e in seq
                                                                      if 0 <= e < len(ds.templates)), int(label)))
                rows.append(session_vector(seq, vecs))
        if not entries:
            raise ConfigError("MeanVectorRetriever.fit: no labelled source sessions")
        self.entries_ = entries
        self.matrix_ = np.stack(rows).astype(np.float32)
        return self

    def bind(self, target_vectors: np.ndarray) -> ExamplesFor:
        """A callable for the labeller, for sessions whose event ids index `target_vectors`."""
        if self.matrix_ is None:
            raise ConfigError("MeanVectorRetriever: call fit(sources) first")
        labels = np.array([e.label for e in self.entries_])

        def examples_for(session: Session) -> list[Example]:
            if self.k == 0:
                return []
            sims = self.matrix_ @ session_vector(session.event_ids, target_vectors)
            if self.balanced:
                picks: list[int] = []
                want = {1: math.ceil(self.k / 2), 0: self.k // 2}
                for lab, n in want.items():
                    idx = np.flatnonzero(labels == lab)
                    picks += idx[np.argsort(-sims[idx], kind="stable")][:n].tolist()
                if len(picks) < self.k:  # one class missing in the sources: fill with nearest others
                    rest = [i for i in np.argsort(-sims, kind="stable").tolist() if i not in picks]
                    picks += rest[: self.k - len(picks)]
                picks.sort(key=lambda i: -sims[i])
            else:
                picks = np.argsort(-sims, kind="stable")[: self.k].tolist()
            return [Example(self.entries_[i].system, self.entries_[i].templates, self.entries_[i].label,
                            float(sims[i]), self.entries_[i].key) for i in picks]

        return examples_for


def router_examples(router, route, sessions: Sequence[Session], k: int, balanced: bool = True) -> ExamplesFor:
    """Few-shot examples through the router's FAISS index of labelled source sessions.

    `route` is `router.split(...)` over exactly `sessions` (row i = sessions[i]); the labeller hands back
    the same session objects, so rows are found by identity. Balanced: ceil(k/2) anomalous and
    floor(k/2) normal neighbours, most similar first.
    """
    rows = {id(s): i for i, s in enumerate(sessions)}

    def examples_for(session: Session) -> list[Example]:
        row = rows.get(id(session))
        if row is None or k <= 0:
            return []
        vec = route.session_vector(row)
        if balanced:
            picks = []
            for label, n in ((1, math.ceil(k / 2)), (0, k // 2)):
                picks += router.nearest_source_sessions(vec, n, label=label) if n else []
        else:
            picks = list(router.nearest_source_sessions(vec, k))
        picks.sort(key=lambda nb: -nb.similarity)
        return [Example(nb.system, tuple(nb.templates), int(nb.label), float(nb.similarity), nb.key)
                for nb in picks if nb.label is not None]

    return examples_for
