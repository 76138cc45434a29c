"""The training-free semantic router: which target sessions do the source systems already "know"?

FusionLog sends target sessions the sources know ("general") to the small meta-learned model and the
rest ("proprietary") to the LLM. The router decides with embeddings and similarity only: no training, no
target labels. Two signals, both cosines in the one shared template space:

* template coverage: the share of a session's distinct informative templates whose nearest source
  template has cosine >= tau_template. This is what the small model generalises over (it reads template
  vectors), so it decides the route: general iff coverage >= tau_coverage (and, with
  `require_session=True`, also nearest-session similarity >= tau_session).
* nearest source session: cosine between session vectors (IDF-weighted mean of template vectors, see
  `session_vectors`). Reported for every session, and the basis of `nearest_source_sessions`, which
  hands the LLM labeller its few-shot examples.

Thresholds (`calibrate`) are label-free. The sources are several systems we know to be different from
one another, so leave one source system out at a time and measure how close its templates (and
sessions) come to the other source systems: that is how close "a different system" typically looks.
tau = the `quantile` (default 0.95) of those similarities, each system weighted equally, clipped to
[tau_min, tau_max]. A target template then counts as known only when it is closer to some source
template than 95% of a foreign system's templates are. Fewer than two source systems leave nothing to
compare, so fixed fallbacks apply. The rule is deterministic (exact search, seeded subsampling, values
rounded to 1e-4), so a rerun gives the same thresholds.

Placeholder-only templates (`<*>`, `<:NUM:>` ...) carry no meaning and match each other trivially
(cosine 1.0 across unrelated systems), so they are left out of the index, coverage and session vectors.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from fusionlog.config import config_from_dict
from fusionlog.constants import FORMAT_VERSION, ROUTER_CONFIG_NAME, ROUTER_INDEX_NAME
from fusionlog.errors import ArtifactError, DataError, NotFittedError
from fusionlog.io import atomic_write_json
from fusionlog.types import Session, SessionDataset
from router.config import IndexConfig, RouterConfig
from router.index import NO_NEIGHBOUR, VectorIndex, check_unit_vectors

logger = logging.getLogger(__name__)

GENERAL = "general"
PROPRIETARY = "proprietary"

_PLACEHOLDER = re.compile(r"<\*>|<:[^<>:\s]*:>")
_LETTER = re.compile(r"[A-Za-z]")
_EXACT = IndexConfig(flat_max=2**62, use_gpu="never")  # calibration: exact, CPU, bit-for-bit repeatable
_ROUND = 4


def index_file(part: str) -> str:
    """`router.templates.faiss` / `router.sessions.faiss`, derived from the one constant."""
    stem, dot, ext = ROUTER_INDEX_NAME.rpartition(".")
    return f"{stem}.{part}{dot}{ext}"


# -- plain records -------------------------------------------------------------------------------


class PreparedLike(Protocol):
    """What `fit` needs from a source: a `SessionDataset` and one unit vector per template."""

    dataset: SessionDataset
    vectors: np.ndarray


@dataclass(frozen=True)
class SourceTemplate:
    """One indexed source template."""

    source: str  # dataset name
    system: str
    template_id: int
    text: str


@dataclass(frozen=True)
class SourceSession:
    """One indexed source session: a distinct event sequence of one source, with its label tally.

    Identical sequences are indexed once; `count` says how many sessions shared it and `anomalous` how
    many of those were labelled 1. `label` is the majority (ties count as anomalous: a sequence that is
    anomalous half the time is worth showing as an anomaly example); None when the source is unlabelled.
    """

    source: str
    system: str
    key: str  # key of the first session with this sequence
    label: int | None
    count: int
    anomalous: int
    event_ids: tuple[int, ...]

    @property
    def anomaly_share(self) -> float | None:
        return None if self.label is None else self.anomalous / self.count


@dataclass(frozen=True)
class Neighbour:
    """A labelled source session near a query, with its template texts (for few-shot prompts)."""

    source: str
    system: str
    key: str
    label: int | None
    similarity: float
    count: int
    anomaly_share: float | None
    templates: list[str]  # the session's template texts in event order (repeats kept)

    def distinct_templates(self) -> list[tuple[str, int]]:
        """(text, count) in order of first appearance: a compact form for prompts."""
        counts: dict[str, int] = {}
        for t in self.templates:
            counts[t] = counts.get(t, 0) + 1
        return list(counts.items())


@dataclass(frozen=True)
class TemplateMatch:
    """A target template, its nearest source template and whether that is close enough to count as known."""

    template_id: int
    text: str
    similarity: float | None  # None: placeholder-only template, not compared
    matched: bool
    nearest: SourceTemplate | None
    sessions: int = 0  # routed target sessions containing it

    def to_dict(self) -> dict:
        return {
            "template_id": self.template_id,
            "text": self.text,
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "matched": self.matched,
            "sessions": self.sessions,
            "nearest": None if self.nearest is None else asdict(self.nearest),
        }


@dataclass(frozen=True)
class SessionRoute:
    """Why one session went where it went."""

    key: str
    route: str
    coverage: float
    templates: int  # distinct informative templates
    matched: int
    similarity: float  # cosine to the nearest source session, -1 when none
    nearest: SourceSession | None
    unmatched: list[TemplateMatch]  # its informative templates below tau_template, most foreign first

    def to_dict(self) -> dict:
        near = None
        if self.nearest is not None:
            near = {"source": self.nearest.source, "system": self.nearest.system, "key": self.nearest.key,
                    "label": self.nearest.label, "count": self.nearest.count}
        return {
            "key": self.key,
            "route": self.route,
            "coverage": round(self.coverage, 4),
            "templates": self.templates,
            "matched": self.matched,
            "similarity": round(self.similarity, 4),
            "nearest_session": near,
            "unmatched": [m.to_dict() for m in self.unmatched],
        }


@dataclass(frozen=True)
class Thresholds:
    """The cosines that decided the routes, and how each was obtained ('calibrated', 'fixed', 'fallback')."""

    tau_template: float
    tau_session: float
    tau_coverage: float
    require_session: bool
    template_method: str
    session_method: str
    details: dict = field(default_factory=dict)  # per-system leave-one-out statistics

    def to_dict(self) -> dict:
        return asdict(self)


# -- building blocks -------------------------------------------------------------------------------


def is_informative(template: str) -> bool:
    """False for templates that are only placeholders and punctuation ('<*>', '<<*>>', '<:NUM:> <:*:>')."""
    return bool(_LETTER.search(_PLACEHOLDER.sub(" ", template)))


def idf_weights(sessions: Sequence[Session], n_templates: int) -> np.ndarray:
    """Smoothed inverse document frequency of each template over `sessions` (sklearn's formula).

    Why IDF: templates in every session (allocate, receive, ...) say little about what a session is;
    the rarer ones carry its meaning, so they should pull the session vector harder.
    """
    df = np.zeros(n_templates, dtype=np.float64)
    for s in sessions:
        ids = np.unique(np.asarray(s.event_ids, dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < n_templates)]
        df[ids] += 1.0
    return (np.log((1.0 + len(sessions)) / (1.0 + df)) + 1.0).astype(np.float64)


def session_vectors(
    sequences: Sequence[Sequence[int]], template_vectors: np.ndarray, idf: np.ndarray, informative: np.ndarray
) -> np.ndarray:
    """(m, d) float32: per sequence, sum over distinct informative templates of (1 + ln count) * idf * vector,
    L2-normalised; a zero row when the sequence has no informative template.

    Why sublinear counts: a template repeated 200 times in a loop should weigh more than one seen once,
    but not 200 times more, or one loop would drown every other event of the session.
    """
    n_templates, dim = template_vectors.shape
    out = np.zeros((len(sequences), dim), dtype=np.float32)
    for row, seq in enumerate(sequences):
        ids, counts = np.unique(np.asarray(seq, dtype=np.int64), return_counts=True)
        keep = (ids >= 0) & (ids < n_templates)
        ids, counts = ids[keep], counts[keep]
        keep = informative[ids]
        ids, counts = ids[keep], counts[keep]
        if ids.size == 0:
            continue
        w = (1.0 + np.log(counts)) * idf[ids]
        v = (w[:, None] * template_vectors[ids].astype(np.float64)).sum(axis=0)
        norm = np.linalg.norm(v)
        if norm > 0:
            out[row] = (v / norm).astype(np.float32)
    return out


def dedupe_sequences(sessions: Sequence[Session]) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Distinct event sequences in first-seen order, and for each session the row of its sequence."""
    rows: dict[tuple[int, ...], int] = {}
    inverse = np.empty(len(sessions), dtype=np.int64)
    for i, s in enumerate(sessions):
        inverse[i] = rows.setdefault(tuple(s.event_ids), len(rows))
    return list(rows), inverse


def coverage(
    seqs: Sequence[Sequence[int]], weight: np.ndarray, known: np.ndarray, informative: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per distinct sequence: share of its distinct informative templates that are `known`, and their count.

    Also returns, per template, how many sessions contain it (`weight[u]` sessions share sequence u) and
    how many events had ids outside the template table (ignored: there is no text to compare).
    """
    n_t = len(known)
    cov = np.zeros(len(seqs), dtype=np.float32)
    n_inf = np.zeros(len(seqs), dtype=np.int32)
    per_template = np.zeros(n_t, dtype=np.int64)
    unknown = 0
    for u, seq in enumerate(seqs):
        arr = np.asarray(seq, dtype=np.int64)
        in_table = (arr >= 0) & (arr < n_t)
        unknown += int((~in_table).sum()) * int(weight[u])
        ids = np.unique(arr[in_table])
        per_template[ids] += weight[u]
        ids = ids[informative[ids]]
        n_inf[u] = ids.size
        if ids.size:
            cov[u] = known[ids].mean()
    return cov, n_inf, per_template, unknown


def weighted_quantile(groups: Sequence[np.ndarray], q: float) -> float:
    """The q-quantile of the pooled values where each group has total weight 1 (each system counts equally)."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    values = np.concatenate(groups)
    weights = np.concatenate([np.full(len(g), 1.0 / len(g)) for g in groups])
    order = np.argsort(values, kind="stable")
    values, cum = values[order], np.cumsum(weights[order]) / weights.sum()
    return float(values[min(int(np.searchsorted(cum, q)), len(values) - 1)])


def leave_one_system_out(by_system: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each system, the cosine of each of its vectors to the nearest vector of any *other* system."""
    out: dict[str, np.ndarray] = {}
    for name in sorted(by_system):
        others = [by_system[o] for o in sorted(by_system) if o != name and len(by_system[o])]
        if not others or not len(by_system[name]):
            continue
        index = VectorIndex.build(np.concatenate(others), _EXACT)
        sims, _ = index.search(by_system[name], 1)
        out[name] = sims[:, 0]
    return out


def calibrate(
    config: RouterConfig, templates_by_system: dict[str, np.ndarray], sessions_by_system: dict[str, np.ndarray]
) -> Thresholds:
    """Label-free thresholds from the sources (module docstring has the rule); fixed values win when set."""
    def sample(by_system: dict[str, np.ndarray], salt: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([config.seed, salt])  # own stream per part: fixing one tau never moves the other
        out = {}
        for name in sorted(by_system):  # sorted: the rng draws in the same order on every run
            v = by_system[name]
            if len(v) > config.calibration_max:
                v = v[np.sort(rng.choice(len(v), config.calibration_max, replace=False))]
            out[name] = v
        return out

    details: dict[str, Any] = {"quantile": config.quantile, "systems": sorted(templates_by_system)}

    def one(fixed: float | None, by_system: dict[str, np.ndarray], fallback: float, what: str,
            salt: int) -> tuple[float, str]:
        if fixed is not None:
            return float(fixed), "fixed"
        loo = leave_one_system_out(sample(by_system, salt))
        if len(loo) < 2:
            return float(fallback), "fallback"
        details[what] = {
            name: {"n": int(len(s)), "median": round(float(np.median(s)), _ROUND),
                   f"q{config.quantile:g}": round(float(np.quantile(s, config.quantile)), _ROUND)}
            for name, s in loo.items()
        }
        raw = weighted_quantile(list(loo.values()), config.quantile)
        details[f"{what}_raw"] = round(raw, _ROUND)
        return round(float(np.clip(raw, config.tau_min, config.tau_max)), _ROUND), "calibrated"

    tau_t, how_t = one(config.tau_template, templates_by_system, config.fallback_tau_template, "templates", 1)
    tau_s, how_s = one(config.tau_session, sessions_by_system, config.fallback_tau_session, "sessions", 2)
    return Thresholds(tau_t, tau_s, config.tau_coverage, config.require_session, how_t, how_s, details)


# -- the result --------------------------------------------------------------------------------------


@dataclass
class RouteResult:
    """Routes of target sessions, aligned with the sessions passed to `split` (row i = session i).

    Consumers mostly need `routes` / `general_mask`; the rest explains each decision.
    """

    target: str
    system: str
    keys: list[str]
    routes: list[str]  # "general" | "proprietary"
    general_mask: np.ndarray  # (n,) bool
    coverage: np.ndarray  # (n,) float32 share of distinct informative templates known to the sources
    n_templates: np.ndarray  # (n,) int32 distinct informative templates per session
    session_similarity: np.ndarray  # (n,) float32 cosine to the nearest source session (-1 = none)
    nearest_session: list[SourceSession | None]
    template_similarity: np.ndarray  # (n_target_templates,) float32; NaN = placeholder-only template
    template_nearest: list[SourceTemplate | None]
    template_sessions: np.ndarray  # (n_target_templates,) int64 routed sessions containing each template
    target_templates: list[str]
    thresholds: Thresholds
    unique_vectors: np.ndarray  # (u, d) float32 session vectors of the distinct sequences
    inverse: np.ndarray  # (n,) row of each session in unique_vectors
    event_ids: list[list[int]]
    unknown_events: int = 0  # event ids outside the template table (ignored)
    _key_index: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def general_indices(self) -> np.ndarray:
        return np.flatnonzero(self.general_mask)

    @property
    def proprietary_indices(self) -> np.ndarray:
        return np.flatnonzero(~self.general_mask)

    def session_vector(self, i: int) -> np.ndarray:
        """The (d,) vector of session i, as used for the nearest-session search."""
        return self.unique_vectors[self.inverse[i]]

    def index_of(self, key: str) -> int:
        if self._key_index is None:
            self._key_index = {}
            for i, k in enumerate(self.keys):
                self._key_index.setdefault(k, i)
        try:
            return self._key_index[key]
        except KeyError:
            raise DataError(
                f"session {key!r} is not among the {len(self.keys)} routed sessions of {self.target}"
            ) from None

    def template_match(self, template_id: int) -> TemplateMatch:
        sim = float(self.template_similarity[template_id])
        informative = not np.isnan(sim)
        return TemplateMatch(
            template_id, self.target_templates[template_id], sim if informative else None,
            informative and sim >= self.thresholds.tau_template, self.template_nearest[template_id],
            int(self.template_sessions[template_id]),
        )

    def explain(self, session: int | str) -> SessionRoute:
        """The decision for one session (by row or key), with each unmatched template's nearest source template."""
        i = self.index_of(session) if isinstance(session, str) else int(session)
        ids = sorted({e for e in self.event_ids[i] if 0 <= e < len(self.target_templates)})
        matches = [self.template_match(t) for t in ids]
        unmatched = sorted((m for m in matches if m.similarity is not None and not m.matched),
                           key=lambda m: (m.similarity, m.template_id))
        return SessionRoute(
            self.keys[i], self.routes[i], float(self.coverage[i]), int(self.n_templates[i]),
            sum(1 for m in matches if m.matched), float(self.session_similarity[i]), self.nearest_session[i],
            unmatched,
        )

    def unmatched_templates(self, top: int | None = None) -> list[TemplateMatch]:
        """Informative target templates below tau_template that occur in routed sessions, most sessions first."""
        out = [self.template_match(t) for t in range(len(self.target_templates)) if self.template_sessions[t] > 0]
        out = [m for m in out if m.similarity is not None and not m.matched]
        out.sort(key=lambda m: (-m.sessions, m.similarity, m.template_id))
        return out if top is None else out[:top]

    def summary(self) -> dict:
        used = self.template_sessions > 0
        informative = ~np.isnan(self.template_similarity)
        matched = informative & (np.nan_to_num(self.template_similarity, nan=-2.0) >= self.thresholds.tau_template)
        n, g = len(self.keys), int(self.general_mask.sum())
        return {
            "target": self.target,
            "system": self.system,
            "sessions": n,
            "general": g,
            "proprietary": n - g,
            "general_share": round(g / n, 4) if n else 0.0,
            "distinct_sequences": int(len(self.unique_vectors)),
            "templates_used": int(used.sum()),
            "templates_matched": int((used & matched).sum()),
            "templates_placeholder_only": int((used & ~informative).sum()),
            "unknown_events": self.unknown_events,
            "thresholds": self.thresholds.to_dict(),
        }

    def to_dict(self, sessions: bool = False) -> dict:
        out = self.summary()
        out["routes"] = list(self.routes)
        if sessions:
            out["explanations"] = [self.explain(i).to_dict() for i in range(len(self.keys))]
        return out


# -- the router ----------------------------------------------------------------------------------------


class SemanticRouter:
    """Index source template and session vectors; route target sessions to 'general' or 'proprietary'.

    sklearn-style: hyperparameters in `__init__`, `fit` returns self, learned state ends in `_`.
    `split` and `nearest_source_sessions` never change the fitted state.
    """

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        self.sources_: list[dict] | None = None
        self.templates_: list[SourceTemplate] = []
        self.sessions_: list[SourceSession] = []
        self.template_index_: VectorIndex | None = None
        self.session_index_: VectorIndex | None = None
        self.thresholds_: Thresholds | None = None
        self.dim_: int = 0
        self._labels_present: set[int] | None = None

    # -- fit -----------------------------------------------------------------------------------------

    def fit(self, sources: Sequence[PreparedLike]) -> SemanticRouter:
        """Index every informative source template and every distinct source session, then calibrate."""
        if not sources:
            raise DataError("SemanticRouter.fit: no sources given")
        t0 = time.perf_counter()
        dim = _common_dim(sources)
        infos: list[dict] = []
        templates: list[SourceTemplate] = []
        sessions: list[SourceSession] = []
        t_vecs: list[np.ndarray] = []
        s_vecs: list[np.ndarray] = []
        t_by_sys: dict[str, list[np.ndarray]] = {}
        s_by_sys: dict[str, list[np.ndarray]] = {}
        for src in sources:
            ds, vecs = src.dataset, check_unit_vectors(src.vectors, f"{src.dataset.name} template vectors")
            if vecs.shape[0] != len(ds.templates):
                raise DataError(f"{ds.name}: {vecs.shape[0]} vectors for {len(ds.templates)} templates")
            informative = np.array([is_informative(t) for t in ds.templates], dtype=bool)
            rows = np.flatnonzero(informative)
            templates += [SourceTemplate(ds.name, ds.system, int(t), ds.templates[t]) for t in rows]
            t_vecs.append(vecs[rows])
            t_by_sys.setdefault(ds.system, []).append(vecs[rows])
            seqs, inverse = dedupe_sequences(ds.sessions)
            sv = session_vectors(seqs, vecs, idf_weights(ds.sessions, len(ds.templates)), informative)
            keep = np.flatnonzero(np.abs(np.linalg.norm(sv, axis=1) - 1.0) <= 1e-3)
            sessions += _source_sessions(ds, seqs, inverse, keep)
            s_vecs.append(sv[keep])
            s_by_sys.setdefault(ds.system, []).append(sv[keep])
            infos.append({"name": ds.name, "system": ds.system, "templates": list(ds.templates),
                          "sessions": len(ds.sessions), "indexed_sessions": int(keep.size)})
        cfg = self.config.index
        self.template_index_ = VectorIndex.build(_stack(t_vecs, dim), cfg, dim=dim)
        self.session_index_ = VectorIndex.build(_stack(s_vecs, dim), cfg, dim=dim)
        self.templates_, self.sessions_, self.sources_, self.dim_ = templates, sessions, infos, dim
        self._labels_present = None
        self.thresholds_ = calibrate(
            self.config,
            {k: _stack(v, dim) for k, v in t_by_sys.items()},
            {k: _stack(v, dim) for k, v in s_by_sys.items()},
        )
        logger.info(
            "router fitted on %s: %d templates, %d distinct sessions indexed; tau_template=%.4f (%s), "
            "tau_session=%.4f (%s) in %.1fs",
            ", ".join(i["name"] for i in infos), len(templates), len(sessions), self.thresholds_.tau_template,
            self.thresholds_.template_method, self.thresholds_.tau_session, self.thresholds_.session_method,
            time.perf_counter() - t0,
        )
        return self

    def _check_fitted(self) -> None:
        if self.thresholds_ is None or self.template_index_ is None or self.session_index_ is None:
            raise NotFittedError("SemanticRouter: call fit(sources) or SemanticRouter.load(dir) first")

    # -- split ---------------------------------------------------------------------------------------

    def split(
        self,
        target: SessionDataset,
        target_vectors: np.ndarray,
        sessions: Sequence[Session] | None = None,
        idf_sessions: Sequence[Session] | None = None,
    ) -> RouteResult:
        """Route `sessions` (default: all of `target`) of a target system; row i of the result = session i.

        `target_vectors[t]` is the unit vector of `target.templates[t]`. IDF weights for target session
        vectors come from `idf_sessions` (default: `target.sessions`): pass the unlabelled adaptation pool
        when test sessions must not influence anything. Labels are never read.
        """
        self._check_fitted()
        assert self.thresholds_ is not None and self.template_index_ is not None
        vecs = check_unit_vectors(target_vectors, f"{target.name} template vectors")
        if vecs.shape != (len(target.templates), self.dim_):
            raise DataError(f"{target.name}: vectors have shape {vecs.shape}, expected "
                            f"({len(target.templates)}, {self.dim_})")
        sessions = list(target.sessions if sessions is None else sessions)
        n_t = len(target.templates)
        tau = self.thresholds_

        informative = np.array([is_informative(t) for t in target.templates], dtype=bool)
        t_sim, t_near = self._nearest_templates(vecs, informative)
        known = informative & (np.nan_to_num(t_sim, nan=-2.0) >= tau.tau_template)

        seqs, inverse = dedupe_sequences(sessions)
        idf = idf_weights(target.sessions if idf_sessions is None else idf_sessions, n_t)
        u_vecs = session_vectors(seqs, vecs, idf, informative)
        u_sim, u_near = self._nearest_rows(u_vecs)
        u_cov, u_n, t_sessions, unknown = coverage(seqs, np.bincount(inverse, minlength=len(seqs)), known, informative)
        u_general = (u_n > 0) & (u_cov >= tau.tau_coverage)
        if tau.require_session:
            u_general &= u_sim >= tau.tau_session
        general = u_general[inverse]
        near = [self.sessions_[j] if j >= 0 else None for j in u_near]
        return RouteResult(
            target=target.name,
            system=target.system,
            keys=[s.key for s in sessions],
            routes=[GENERAL if g else PROPRIETARY for g in general],
            general_mask=general,
            coverage=u_cov[inverse],
            n_templates=u_n[inverse],
            session_similarity=u_sim[inverse],
            nearest_session=[near[u] for u in inverse],
            template_similarity=t_sim,
            template_nearest=t_near,
            template_sessions=t_sessions,
            target_templates=list(target.templates),
            thresholds=tau,
            unique_vectors=u_vecs,
            inverse=inverse,
            event_ids=[s.event_ids for s in sessions],
            unknown_events=unknown,
        )

    def _nearest_templates(
        self, vectors: np.ndarray, informative: np.ndarray
    ) -> tuple[np.ndarray, list[SourceTemplate | None]]:
        """Per target template: cosine to its nearest source template (NaN if placeholder-only) and that template."""
        assert self.template_index_ is not None
        sims = np.full(len(vectors), np.nan, dtype=np.float32)
        near: list[SourceTemplate | None] = [None] * len(vectors)
        rows = np.flatnonzero(informative)
        if rows.size:
            s, ids = self.template_index_.search(vectors[rows], 1)
            sims[rows] = s[:, 0]
            for r, j in zip(rows, ids[:, 0], strict=True):
                near[r] = self.templates_[j] if j >= 0 else None
        return sims, near

    def _nearest_rows(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest source session per row; zero rows (no informative template) get -1 / -1."""
        assert self.session_index_ is not None
        sims = np.full(len(vectors), NO_NEIGHBOUR, dtype=np.float32)
        ids = np.full(len(vectors), -1, dtype=np.int64)
        nonzero = np.flatnonzero(np.linalg.norm(vectors, axis=1) > 0.5) if len(vectors) else np.zeros(0, int)
        if nonzero.size:
            s, i = self.session_index_.search(vectors[nonzero], 1)
            sims[nonzero], ids[nonzero] = s[:, 0], i[:, 0]
        return sims, ids

    # -- few-shot retrieval -------------------------------------------------------------------------

    def nearest_source_sessions(
        self, vectors: np.ndarray, k: int = 5, label: int | None = None
    ) -> list[Neighbour] | list[list[Neighbour]]:
        """The k nearest *labelled* source sessions (distinct sequences), most similar first.

        `vectors`: one session vector (d,) -> list[Neighbour]; or (m, d) -> list of m such lists.
        `label`: only sessions whose majority label is this (e.g. 1 for anomaly examples).
        Use `RouteResult.session_vector(i)` for a routed target session.
        """
        self._check_fitted()
        assert self.session_index_ is not None
        if k < 1:
            raise DataError(f"nearest_source_sessions: k={k} must be >= 1")
        q = np.asarray(vectors, dtype=np.float32)
        single = q.ndim == 1
        q = q[None, :] if single else q
        if not self._has_labelled(label):
            return [] if single else [[] for _ in range(len(q))]
        out: list[list[Neighbour]] = [[] for _ in range(len(q))]
        todo = np.arange(len(q))
        fetch = min(self.session_index_.ntotal, 4 * k)
        while todo.size:
            sims, ids = self.session_index_.search(q[todo], fetch)
            still = []
            for row, qi in enumerate(todo):
                hits = [(float(s), int(j)) for s, j in zip(sims[row], ids[row], strict=True)
                        if j >= 0 and self._usable(int(j), label)]
                if len(hits) >= k or fetch >= self.session_index_.ntotal:
                    out[qi] = [self._neighbour(j, s) for s, j in hits[:k]]
                else:
                    still.append(qi)
            todo = np.asarray(still, dtype=np.int64)
            fetch = min(self.session_index_.ntotal, fetch * 4)
        return out[0] if single else out

    def _has_labelled(self, label: int | None) -> bool:
        if self._labels_present is None:  # computed once: the session table never changes after fit/load
            self._labels_present = {s.label for s in self.sessions_ if s.label is not None}
        return bool(self._labels_present) if label is None else label in self._labels_present

    def _usable(self, row: int, label: int | None) -> bool:
        lab = self.sessions_[row].label
        return lab is not None and (label is None or lab == label)

    def _neighbour(self, row: int, similarity: float) -> Neighbour:
        s = self.sessions_[row]
        table = self._templates_of(s.source)
        texts = [table[e] for e in s.event_ids if 0 <= e < len(table)]
        return Neighbour(s.source, s.system, s.key, s.label, similarity, s.count, s.anomaly_share, texts)

    def _templates_of(self, source: str) -> list[str]:
        assert self.sources_ is not None
        for info in self.sources_:
            if info["name"] == source:
                return info["templates"]
        raise ArtifactError(f"router has no source named {source!r}")

    # -- persistence -------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write router.templates.faiss/.json, router.sessions.faiss/.json and router.json (written last)."""
        self._check_fitted()
        assert self.template_index_ is not None and self.session_index_ is not None
        assert self.thresholds_ is not None and self.sources_ is not None
        directory = Path(directory)
        self.template_index_.save(directory / index_file("templates"))
        self.session_index_.save(directory / index_file("sessions"))
        names = [i["name"] for i in self.sources_]
        doc = {
            "format_version": FORMAT_VERSION,
            "faiss_version": faiss.__version__,
            "numpy_version": np.__version__,
            "config": asdict(self.config),
            "thresholds": self.thresholds_.to_dict(),
            "dim": self.dim_,
            "sources": self.sources_,
            "template_rows": {"source": [names.index(t.source) for t in self.templates_],
                              "template_id": [t.template_id for t in self.templates_]},
            "session_rows": {
                "source": [names.index(s.source) for s in self.sessions_],
                "key": [s.key for s in self.sessions_],
                "label": [s.label for s in self.sessions_],
                "count": [s.count for s in self.sessions_],
                "anomalous": [s.anomalous for s in self.sessions_],
                "event_ids": [list(s.event_ids) for s in self.sessions_],
            },
        }
        atomic_write_json(directory / ROUTER_CONFIG_NAME, doc)
        return directory

    @classmethod
    def load(cls, directory: str | Path, use_gpu: str | None = None) -> SemanticRouter:
        """Rebuild a router written by `save`; the same inputs then give the same split."""
        directory = Path(directory)
        path = directory / ROUTER_CONFIG_NAME
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (not a saved router)")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: cannot read: {exc}") from exc
        if doc.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path}: format_version {doc.get('format_version')} != {FORMAT_VERSION}")
        try:
            router = cls(config_from_dict(RouterConfig, doc["config"]))
            sources = doc["sources"]
            tr, sr = doc["template_rows"], doc["session_rows"]
            router.templates_ = [
                SourceTemplate(sources[s]["name"], sources[s]["system"], t, sources[s]["templates"][t])
                for s, t in zip(tr["source"], tr["template_id"], strict=True)
            ]
            router.sessions_ = [
                SourceSession(sources[s]["name"], sources[s]["system"], k, lab, c, a, tuple(e))
                for s, k, lab, c, a, e in zip(sr["source"], sr["key"], sr["label"], sr["count"], sr["anomalous"],
                                              sr["event_ids"], strict=True)
            ]
            router.thresholds_ = Thresholds(**doc["thresholds"])
            router.sources_, router.dim_ = sources, int(doc["dim"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: malformed router file: {exc}") from exc
        router.template_index_ = VectorIndex.load(directory / index_file("templates"), use_gpu)
        router.session_index_ = VectorIndex.load(directory / index_file("sessions"), use_gpu)
        for part, idx, rows in (("templates", router.template_index_, router.templates_),
                                ("sessions", router.session_index_, router.sessions_)):
            if idx.ntotal != len(rows) or idx.dim != router.dim_:
                raise ArtifactError(f"{directory / index_file(part)}: {idx.ntotal} x {idx.dim} vectors but "
                                    f"{ROUTER_CONFIG_NAME} describes {len(rows)} x {router.dim_}")
        return router


# -- helpers -------------------------------------------------------------------------------------------


def _common_dim(sources: Sequence[PreparedLike]) -> int:
    dims = {np.shape(s.vectors)[1] for s in sources if np.ndim(s.vectors) == 2}
    if len(dims) != 1:
        raise DataError(f"sources disagree on vector dimension {sorted(dims)} (one embedding model for all, please)")
    return dims.pop()


def _stack(parts: list[np.ndarray], dim: int) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), dtype=np.float32)


def _source_sessions(
    ds: SessionDataset, seqs: list[tuple[int, ...]], inverse: np.ndarray, keep: np.ndarray
) -> list[SourceSession]:
    """One record per kept distinct sequence: first key, session count and anomalous count."""
    count = np.bincount(inverse, minlength=len(seqs))
    anomalous = np.zeros(len(seqs), dtype=np.int64)
    unlabelled = np.zeros(len(seqs), dtype=np.int64)
    first: dict[int, str] = {}
    for s, u in zip(ds.sessions, inverse, strict=True):
        first.setdefault(int(u), s.key)
        if s.label is None:
            unlabelled[u] += 1
        elif s.label == 1:
            anomalous[u] += 1
    out = []
    for u in keep:
        labelled = unlabelled[u] == 0
        label = (1 if 2 * anomalous[u] >= count[u] else 0) if labelled else None
        out.append(SourceSession(ds.name, ds.system, first[int(u)], label, int(count[u]), int(anomalous[u]),
                                 seqs[u]))
    return out
