"""The small session model (MetaLog network, section 3.4) and the inputs it sees.

Two halves, both needed at detection time and neither needing training code:

* **Inputs** (`cap_events`, `ReferenceStats`, `encode_sessions`, `make_batch`): a session's event ids
  become a sequence of frozen template vectors from the shared embedding space, plus a few label-free
  *rarity* features computed against a reference corpus of the same system (a source's own sessions, or
  the target's unlabelled adaptation pool). Rarity is the one signal that means the same thing in every
  system ("this template / this set of templates is unusual here", "this session lacks steps most
  sessions have"), which the shared vectors alone do not give a cross-system model; see `ReferenceStats`.
  The fourth feature (missing-everyday) was adopted by the same leave-one-source-system-out protocol as
  the bound below: it won for 4 of 5 targets and tied the fifth (openstack, 0.579 vs 0.583). The fifth,
  set surprise (`ReferenceStats.surprise`), has a unit that means the same in every system.
* **Network** (`SessionModelConfig`, `SessionModel`), two paths summed into one anomaly logit:
  - *deep*: template vectors → cosines to fixed anchor phrases (a frozen, system-agnostic projection of
    the shared space) → bidirectional 2-layer GRU (hidden 100) → self-attention over time steps (paper
    eq. 4) → non-linear head, bounded to ±`deep_bound`;
  - *wide*: the session's rarity features through non-negative weights (monotone: rarer is never more
    normal); by default only the set surprise (`wide_features`).
  `forward` also returns the pooled GRU feature (the domain discriminator and the router read it) and
  per-step attention weights (for explanations).

Why this shape (measured, see the eval report of issue 3): a GRU reading all 384 dimensions learned the
source systems' vocabulary and ranked target anomalies *below* normal sessions (ROC-AUC 0.47-0.71 on
OpenStack/HDFS); rarity alone ranks them well, and an unbounded deep path learned to cancel it. The wide
path carries what transfers; the deep path may adjust it, not overturn it. The default bound, 0.01, was
chosen label-free by leave-one-source-system-out (`eval.select`: each labelled source system in turn the
target of the others) over {1, 0.3, 0.01}: it won for 4 of 5 targets. The same protocol then preferred the
surprise alone on the wide path to source-learned weights over all five features (mean pseudo-target F1
0.80 vs 0.77), so the general path ranks by surprise, the GRU breaking ties. Distillation rounds
widen the bound by the LLM's measured trust, so the LLM's labels can teach the deep path what rarity
cannot see (distill.rounds); with the template teacher the LLM's per-template verdicts reweigh the surprise
instead (`ReferenceStats.with_have_weights`), which keeps its unit and the served model LLM-free. Before any
LLM, the same weights carry what the sources' labelled templates say the target's templates mean
(`fusionlog.template_prior`: a linear classifier over the shared space, trusted by how well it ranks a
held-out source system's templates); the LLM's verdicts add to them.

Persistence follows sentence-transformers' `Dense`: `config.json` + `model.safetensors`, reloaded
with `cls(**config)` and `load_state_dict`. No pickle anywhere.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fusionlog.config import config_from_dict, register_config_type
from fusionlog.constants import CONFIG_NAME, FORMAT_VERSION, MODEL_WEIGHTS_NAME
from fusionlog.errors import ArtifactError, ConfigError
from fusionlog.io import atomic_write_bytes, atomic_write_json
from fusionlog.types import Session

#: Per-step features appended to each template vector: [template rarity].
N_EVENT_FEATURES = 1
#: Per-session features fed to the head beside the pooled feature: [set rarity, max rarity, mean rarity,
#: missing-everyday, squashed set surprise]. Append-only: a model reads the first
#: `SessionModelConfig.session_features` of them, so artifacts trained with fewer keep scoring as they were trained.
N_SESSION_FEATURES = 5

#: One unit of `ReferenceStats.surprise`: the surprise of a single template never seen in the corpus.
SURPRISE_UNIT = 1.0

#: Column of the squashed surprise, s / (1 + s), in the session features (1 unit sits at 0.5).
SURPRISE_FEATURE = 4

#: What the wide path reads: every session feature with source-learned weights, or the surprise alone
#: (the one feature whose unit means the same in every system; see `ReferenceStats.surprise`).
WIDE_FEATURES = ("all", "surprise")

#: Gain of the wide path's weight parametrisation (see SessionModel.__init__).
RARITY_GAIN = 10.0

#: Fixed phrases whose cosine similarity to each template is a system-agnostic semantic input (a frozen
#: projection of the shared space onto axes every system's logs share: failure words vs routine words).
#: Why: a GRU reading all 384 dimensions learns the *source* systems' vocabulary and transfers poorly;
#: these axes mean the same in every system.
ANCHOR_TEXTS: tuple[str, ...] = (
    "error", "exception", "failed", "failure", "fatal", "critical", "timeout", "timed out", "abort",
    "interrupted", "denied", "refused", "not found", "unexpected", "corrupt", "crash", "killed",
    "terminated", "lost connection", "retry", "warning", "invalid", "cannot", "unable to",
    "success", "completed successfully", "done", "started", "finished", "received", "added", "connected",
    "info", "ok", "created", "stopped",
)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------


def collapse_repeats(ids: Sequence[int]) -> list[int]:
    """Drop consecutive repeats (A A A B → A B): loops and retries keep their order, not their length."""
    out: list[int] = []
    for e in ids:
        if not out or out[-1] != e:
            out.append(int(e))
    return out


def cap_events(ids: Sequence[int], max_len: int) -> list[int]:
    """The event ids the GRU reads, at most `max_len` of them.

    Why this order of steps: a few sessions (Hadoop containers) run to tens of thousands of events, and a
    GRU on CPU must not read them all. (1) Consecutive repeats are collapsed; that alone keeps every
    session of OpenStack, HDFS and BGL intact. (2) If still too long, only the first occurrence of each
    template is kept, in order: every distinct template (an error line included) still reaches the
    model. (3) If even that is too long, the first and last halves are kept (start-up and the end, where
    failures show). Counts of repeats are lost; the rarity features below do not depend on the cap.
    """
    seq = collapse_repeats(ids)
    if len(seq) <= max_len:
        return seq
    seq = list(dict.fromkeys(seq))
    if len(seq) <= max_len:
        return seq
    head = max_len - max_len // 2
    return seq[:head] + seq[len(seq) - max_len // 2 :]


@dataclass
class ReferenceStats:
    """Label-free statistics of one system's reference corpus, the basis of the rarity features.

    A source system's reference corpus is its own sessions (labels unused); the target's is its
    unlabelled adaptation pool. Rarity is normalised by the corpus size, ``log((N+1)/(c+1)) / log(N+1)``,
    so 0 means "in every session" and 1 means "in no other session", whatever N is. A session that is
    itself part of the corpus is counted out (leave-one-out), so a training session sees the same
    statistic a new session would. By default (`SessionModelConfig.trim_reference`) the corpus is trimmed to
    the sessions within 1 unit of surprise of it (`trimmed`): the pool's own failures do not count.
    """

    n_sessions: int
    doc_freq: np.ndarray  # (n_templates,) number of corpus sessions containing each template
    set_counts: dict[tuple[int, ...], int] = field(default_factory=dict)  # distinct-id set -> sessions
    # (n_templates,) how much *having* each template counts in `surprise` (None = 1 each); set from what an
    # LLM says each template means (`with_have_weights`), saved with the stats so serving needs no LLM
    have_weights: np.ndarray | None = None
    # (lack cost per template, its sum) per (leave-one-out offset, everyday only); derived from doc_freq, never saved
    _lack: dict[tuple[int, bool], tuple[np.ndarray, float]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_sessions(cls, sessions: Sequence[Session], n_templates: int, trim: bool = False) -> ReferenceStats:
        """The corpus of these sessions; with `trim`, of those the corpus itself reads as normal (`trimmed`)."""
        sets = Counter(_set_key(s.event_ids) for s in sessions)
        return cls.trimmed(sets, n_templates) if trim else cls._from_sets(sets, n_templates)

    @classmethod
    def _from_sets(cls, sets: Mapping[tuple[int, ...], int], n_templates: int) -> ReferenceStats:
        df = np.zeros(n_templates, dtype=np.int64)
        for key, count in sets.items():
            known = [e for e in key if 0 <= e < n_templates]
            df[known] += count
        return cls(int(sum(sets.values())), df, dict(sets))

    @classmethod
    def trimmed(cls, sets: Mapping[tuple[int, ...], int], n_templates: int, max_rounds: int = 20) -> ReferenceStats:
        """The corpus of the sessions within `SURPRISE_UNIT` of it: a fixed point of the 1-unit rule.

        Why: an unlabelled pool holds anomalies, and a failure counted in the corpus makes its own error lines
        look less rare and the steps it lacks look less everyday, for every session scored against it. The
        rule that flags a session calls one above 1 unit abnormal, so the reference it is measured against
        should be the sessions that rule keeps: count the corpus, drop the sessions above 1 unit (each scored
        leave-one-out while kept, as new once dropped), recount, until nothing changes. Identical template
        sets score alike, so whole sets go, and `counts_itself` can tell a dropped pool session from a kept
        one. A pool with no session within 1 unit (a small pool of a many-template system) has no normal side
        to keep: its full corpus is returned, as without trimming.
        """
        full = cls._from_sets(sets, n_templates)
        stats, kept = full, set(sets)
        for _ in range(max_rounds):
            keep = {k for k in sets if stats.surprise(k, in_corpus=True) <= SURPRISE_UNIT}
            if sum(sets[k] for k in keep) < 2:
                return full
            if keep == kept:
                return stats
            kept, stats = keep, cls._from_sets({k: sets[k] for k in keep}, n_templates)
        return stats

    def counts_itself(self, ids: Sequence[int], in_corpus: bool) -> bool:
        """Whether a session is counted out of the corpus it is scored against (leave-one-out).

        `in_corpus` says the session is one of those the corpus was built from; a trimmed corpus dropped
        whole template sets, so a pool session whose set it does not hold was left out and reads as new.
        """
        if not in_corpus:
            return False
        return not self.set_counts or self.set_counts.get(_set_key(ids), 0) > 0

    def _rarity(self, count: np.ndarray | float) -> np.ndarray:
        n = self.n_sessions
        if n <= 1:
            return np.ones_like(np.asarray(count, dtype=np.float32))
        c = np.clip(np.asarray(count, dtype=np.float64), 0, None)
        return (np.log((n + 1) / (c + 1)) / math.log(n + 1)).astype(np.float32)

    def event_rarity(self, ids: Sequence[int], in_corpus: bool) -> np.ndarray:
        """(len(ids),) rarity of each event's template; unseen or unknown ids get 1."""
        arr = np.asarray(ids, dtype=np.int64)
        known = (arr >= 0) & (arr < len(self.doc_freq))
        counts = np.zeros(len(arr), dtype=np.float64)
        counts[known] = self.doc_freq[arr[known]] - (1 if in_corpus else 0)
        return self._rarity(counts)

    def session_features(self, ids: Sequence[int], in_corpus: bool) -> np.ndarray:
        """(5,) [rarity of the exact template set, max and mean template rarity over distinct templates,
        missing-everyday (`missing_everyday`), set surprise squashed to [0, 1) as s / (1 + s) (`surprise`)]."""
        key = _set_key(ids)
        in_corpus = self.counts_itself(key, in_corpus)
        set_count = self.set_counts.get(key, 0) - (1 if in_corpus else 0)
        per_template = self.event_rarity(key, in_corpus) if key else np.ones(1, np.float32)
        return np.array(
            [float(self._rarity(set_count)), per_template.max(), per_template.mean(),
             self.missing_everyday(key, in_corpus), squash_surprise(self.surprise(key, in_corpus))],
            dtype=np.float32,
        )

    def surprise(self, ids: Sequence[int], in_corpus: bool) -> float:
        """How many ways the session departs from the corpus, in units of "one never-seen template": the sum,
        over every template of the system, of the rarity of agreeing with this session about it (having it
        when present, lacking it when absent). The negative log-likelihood of the template set under
        independent per-template frequencies, divided by log(N+1).

        Why a sum: a benign rarity is usually one odd line on an ordinary lifecycle (about 1 unit), while a
        failure breaks several things at once: it lacks the steps that follow the fault and adds error lines
        (several units). Max and mean rarity see one template at a time and cannot count departures. The
        unit is the same in every system, so "more than one never-seen template's worth" means the same
        everywhere (squashed, 1 unit sits at 0.5, the wide path's centre).
        """
        key = _set_key(ids)
        in_corpus = self.counts_itself(key, in_corpus)
        n = len(self.doc_freq)
        present = [e for e in key if 0 <= e < n]
        unknown = len(key) - len(present)  # ids outside the corpus' table: never seen, 1 each
        if self.n_sessions <= 1 or n == 0:
            return float(len(key))
        lack, everything = self._lack_costs(1 if in_corpus else 0, everyday_only=False)
        have = self.have_costs(present, in_corpus)
        return max(0.0, everything - float(lack[present].sum())) + float(have.sum()) + unknown

    def with_have_weights(self, weights: np.ndarray | None) -> ReferenceStats:
        """A copy whose `surprise` counts having template t as `weights[t]` times its rarity (None: plain).

        Why: rarity cannot tell a rare routine message (a re-replication's "ask to replicate") from a rare
        error ("Unexpected error trying to delete block"); an LLM reading the template's words can. A weight
        of 1 leaves the unit ("one never-seen template") as it was, so the 1-unit cut still means the same.
        What a session *lacks* is not reweighted: lacking a step says nothing about the step's words.
        """
        if weights is None:
            return replace(self, have_weights=None, _lack=self._lack)
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != self.doc_freq.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ConfigError(f"have weights: need {len(self.doc_freq)} finite values >= 0, got shape {w.shape}")
        return replace(self, have_weights=w, _lack=self._lack)  # lack costs do not depend on the weights

    def missing_everyday(self, key: Sequence[int], in_corpus: bool) -> float:
        """How much of what most sessions have this one lacks: the sum, over the *everyday* templates (in more
        than half of the corpus) absent from the session, of the rarity of lacking each (the same normalised
        surprise as `_rarity`, applied to the count of sessions without it), capped at 1.

        Why: the other features only see what a session *has*. A broken workflow (an instance that never
        finished spawning, a block write that never completed) is told by the steps it lacks, while a rare
        but benign session (a routine periodic message attached to an ordinary lifecycle) has everything
        the ordinary one has plus one rare template; set and max rarity cannot tell the two apart. Lacking a
        template that nearly half of the corpus also lacks costs little; lacking one that all others have
        costs 1. Only everyday templates count: every session lacks the many rare ones, and their small costs
        would add up to a constant that saturates the cap in systems with hundreds of templates.
        """
        n = len(self.doc_freq)
        if self.n_sessions <= 1 or n == 0:
            return 0.0
        lack, everything = self._lack_costs(1 if in_corpus else 0, everyday_only=True)
        present = [e for e in key if 0 <= e < n]
        return float(min(1.0, max(0.0, everything - float(lack[present].sum()))))

    def lack_costs(self, in_corpus: bool) -> np.ndarray:
        """(n_templates,) what lacking each template adds to `surprise` (read-only; `fusionlog.explain`)."""
        lack = self._lack_costs(1 if in_corpus else 0, everyday_only=False)[0].view()
        lack.setflags(write=False)
        return lack

    def have_costs(self, present: Sequence[int], in_corpus: bool) -> np.ndarray:
        """(len(present),) what having each of these table templates adds to `surprise` (weighted)."""
        if not len(present):
            return np.zeros(0)
        costs = self.event_rarity(present, in_corpus).astype(np.float64)
        return costs * self.have_weights[list(present)] if self.have_weights is not None else costs

    def _lack_costs(self, own: int, everyday_only: bool) -> tuple[np.ndarray, float]:
        """Per-template cost of lacking it, and the cost of lacking all (cached: detection calls this per session)."""
        if (own, everyday_only) not in self._lack:
            lack = self._rarity(self.n_sessions - self.doc_freq - own).astype(np.float64)  # (n_templates,)
            if everyday_only:
                lack[2 * self.doc_freq <= self.n_sessions] = 0.0  # not everyday: lacking it is the usual case
            self._lack[(own, everyday_only)] = (lack, float(lack.sum()))
        return self._lack[(own, everyday_only)]

    def to_dict(self) -> dict:
        d = {
            "n_sessions": int(self.n_sessions),
            "doc_freq": [int(x) for x in self.doc_freq],
            "set_counts": [[list(k), int(v)] for k, v in sorted(self.set_counts.items())],
        }
        if self.have_weights is not None:
            d["have_weights"] = [float(x) for x in self.have_weights]  # exact: a reload scores the same
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ReferenceStats:
        try:
            stats = cls(
                int(d["n_sessions"]),
                np.asarray(d["doc_freq"], dtype=np.int64),
                {tuple(int(e) for e in k): int(v) for k, v in d["set_counts"]},
            )
            weights = d.get("have_weights")  # absent in artifacts saved before LLM-weighted surprise
            return stats if weights is None else stats.with_have_weights(np.asarray(weights, dtype=np.float64))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ArtifactError(f"reference stats: malformed ({exc})") from exc


def squash_surprise(surprise: float) -> float:
    """Surprise (>= 0, unbounded) → [0, 1) as s / (1 + s), the range of the other features; 1 unit → 0.5."""
    return surprise / (1.0 + surprise)


def surprising(session_features: np.ndarray) -> np.ndarray:
    """(G,) bool: rows whose session surprise is above 1 unit (read from the squashed feature column)."""
    return np.asarray(session_features)[:, SURPRISE_FEATURE] > squash_surprise(SURPRISE_UNIT)


def _set_key(ids: Sequence[int]) -> tuple[int, ...]:
    return tuple(sorted({int(e) for e in ids}))


#: What a session's model input is a function of (given one model, its `ReferenceStats` and vector table).
InputKey = tuple[tuple[int, ...], tuple[int, ...]]


def input_key(ids: Sequence[int], max_len: int) -> InputKey:
    """(capped event ids, sorted distinct ids): the identity of a session's model input, label aside.

    Inference-only. `encode_sessions` groups sessions by exactly these two plus the label: the step
    rarities are a function of the capped ids, the session features of the distinct-id set, and the
    vectors of the capped ids' table rows. A serving cache keys scores by it (fusionlog.served).
    """
    return tuple(cap_events(ids, max_len) or [-1]), _set_key(ids)


@dataclass
class EncodedSessions:
    """Sessions of ONE system, deduplicated into groups of identical model input.

    Identical sessions are common (OpenStack: 5,546 sessions, 582 distinct sequences); scoring and
    training each distinct input once and carrying a `count` makes both an order of magnitude faster
    with the same result. `index[i]` is the group of the i-th input session.
    """

    system: str
    ids: list[np.ndarray]  # per group: capped event ids (T_g,)
    step_features: list[np.ndarray]  # per group: (T_g, N_EVENT_FEATURES)
    session_features: np.ndarray  # (G, N_SESSION_FEATURES)
    labels: np.ndarray  # (G,) float32 in {0, 1}, or NaN where unlabelled
    counts: np.ndarray  # (G,) sessions per group
    index: np.ndarray  # (n_sessions,) group of each input session

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, groups: np.ndarray) -> EncodedSessions:
        groups = np.asarray(groups, dtype=np.int64)
        remap = {int(g): i for i, g in enumerate(groups)}
        return EncodedSessions(
            self.system,
            [self.ids[g] for g in groups],
            [self.step_features[g] for g in groups],
            self.session_features[groups],
            self.labels[groups],
            self.counts[groups],
            np.array([remap.get(int(g), -1) for g in self.index], dtype=np.int64),
        )


def encode_sessions(
    sessions: Sequence[Session],
    stats: ReferenceStats,
    max_len: int,
    in_corpus: bool,
    system: str = "",
) -> EncodedSessions:
    """Sessions → deduplicated model inputs (ids, rarity features, labels); see `EncodedSessions`."""
    groups: dict[tuple, int] = {}
    ids: list[np.ndarray] = []
    steps: list[np.ndarray] = []
    sess: list[np.ndarray] = []
    labels: list[float] = []
    counts: list[int] = []
    index = np.empty(len(sessions), dtype=np.int64)
    for i, s in enumerate(sessions):
        capped = cap_events(s.event_ids, max_len) or [-1]
        member = stats.counts_itself(s.event_ids, in_corpus)
        label = float("nan") if s.label is None else float(s.label)
        key = (tuple(capped), _set_key(s.event_ids), "nan" if s.label is None else s.label)
        g = groups.get(key)
        if g is None:
            g = groups[key] = len(ids)
            ids.append(np.asarray(capped, dtype=np.int64))
            steps.append(stats.event_rarity(capped, member)[:, None])
            sess.append(stats.session_features(s.event_ids, member))
            labels.append(label)
            counts.append(0)
        counts[g] += 1
        index[i] = g
    return EncodedSessions(
        system or (sessions[0].system if sessions else ""),
        ids,
        steps,
        np.stack(sess) if sess else np.zeros((0, N_SESSION_FEATURES), np.float32),
        np.asarray(labels, dtype=np.float32),
        np.asarray(counts, dtype=np.int64),
        index,
    )


class Batch(NamedTuple):
    x: torch.Tensor  # (B, T, input_dim + N_EVENT_FEATURES)
    mask: torch.Tensor  # (B, T) bool, True at real events
    session_features: torch.Tensor  # (B, N_SESSION_FEATURES)
    labels: torch.Tensor  # (B,) float, NaN where unlabelled


def make_batch(
    enc: EncodedSessions, groups: Sequence[int], vectors: torch.Tensor, device: torch.device | str = "cpu"
) -> Batch:
    """Pad the chosen groups into one batch; `vectors` is the system's (n_templates, dim) table.

    Unknown ids (-1 or past the table) read a zero vector: the model still sees their rarity (1.0).
    """
    groups = list(groups)
    lengths = [len(enc.ids[g]) for g in groups]
    t_max = max(lengths)
    n_t, dim = vectors.shape
    ids = np.full((len(groups), t_max), n_t, dtype=np.int64)  # n_t = the zero row
    feats = np.zeros((len(groups), t_max, N_EVENT_FEATURES), dtype=np.float32)
    mask = np.zeros((len(groups), t_max), dtype=bool)
    for b, g in enumerate(groups):
        row = enc.ids[g]
        row = np.where((row >= 0) & (row < n_t), row, n_t)
        ids[b, : len(row)] = row
        feats[b, : len(row)] = enc.step_features[g]
        mask[b, : len(row)] = True
    table = torch.cat([vectors, vectors.new_zeros(1, dim)], dim=0)
    ids_t = torch.from_numpy(ids).to(table.device)
    x = torch.cat([table[ids_t], torch.from_numpy(feats).to(table.device)], dim=-1)
    return Batch(
        x.to(device),
        torch.from_numpy(mask).to(device),
        torch.from_numpy(enc.session_features[groups]).to(device),
        torch.from_numpy(enc.labels[groups]).to(device),
    )


# ---------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------


@register_config_type
@dataclass(frozen=True)
class SessionModelConfig:
    """Shape of the session model. Defaults follow MetaLog (2-layer bidirectional GRU, hidden 100)."""

    input_dim: int = field(default=384, metadata={"help": "template vector size (all-MiniLM-L6-v2: 384)"})
    event_features: int = field(default=N_EVENT_FEATURES, metadata={"help": "extra per-step features"})
    session_features: int = field(default=N_SESSION_FEATURES, metadata={"help": "extra per-session features"})
    hidden: int = field(default=100, metadata={"help": "GRU hidden units per direction"})
    layers: int = field(default=2, metadata={"help": "GRU layers"})
    bidirectional: bool = True
    attention_dim: int = field(default=64, metadata={"help": "query/key size of the time attention"})
    head_hidden: int = field(default=64, metadata={"help": "hidden units of the non-linear head"})
    dropout: float = field(default=0.1, metadata={"help": "dropout between GRU layers and in the head"})
    max_len: int = field(default=64, metadata={"help": "events read per session (see cap_events)"})
    anchors: int = field(default=len(ANCHOR_TEXTS), metadata={"help": "anchor phrases (cosine inputs), 0 = off"})
    vector_features: int = field(
        default=0, metadata={"help": "learned projection of the raw vector fed to the GRU (0 = anchors only)"}
    )
    vector_dropout: float = field(default=0.5, metadata={"help": "dropout on the projected raw vector"})
    rarity_in_gru: bool = field(
        default=False,
        metadata={"help": "also feed per-step rarity to the GRU (lets the deep path undo the monotone path)"},
    )
    deep_bound: float = field(
        default=0.01,
        metadata={"help": "the GRU path adds at most +-deep_bound to the logit (0 = unbounded)"},
    )
    monotone_rarity: bool = field(
        default=True,
        metadata={"help": "session features enter the logit through non-negative weights (rarer = never more normal)"},
    )
    wide_features: str = field(
        default="surprise",
        metadata={"help": "session features on the wide path: 'surprise' or 'all' (weights learned on the sources)"},
    )
    trim_reference: bool = field(
        default=True,
        metadata={"help": "count each system's reference corpus over the sessions within 1 unit of surprise of it "
                          "(ReferenceStats.trimmed), so the pool's anomalies do not make their own lines look usual"},
    )

    def __post_init__(self) -> None:
        for name in ("input_dim", "hidden", "layers", "attention_dim", "head_hidden", "max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SessionModelConfig.{name}={getattr(self, name)}: must be >= 1")
        for name in ("event_features", "session_features", "anchors", "vector_features"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SessionModelConfig.{name}={getattr(self, name)}: must be >= 0")
        if self.deep_bound < 0:
            raise ConfigError(f"SessionModelConfig.deep_bound={self.deep_bound}: must be >= 0")
        if self.wide_features not in WIDE_FEATURES:
            raise ConfigError(f"SessionModelConfig.wide_features={self.wide_features!r}: one of {WIDE_FEATURES}")
        if self.wide_features == "surprise" and self.session_features <= SURPRISE_FEATURE:
            raise ConfigError(f"wide_features='surprise' needs session_features > {SURPRISE_FEATURE}")
        for name in ("dropout", "vector_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"SessionModelConfig.{name}={getattr(self, name)}: must be in [0, 1)")

    @property
    def gru_input_dim(self) -> int:
        return (self.event_features if self.rarity_in_gru else 0) + self.anchors + self.vector_features

    @property
    def wide_dim(self) -> int:
        """Session features the wide path (or the head, when not monotone) reads."""
        return 1 if self.wide_features == "surprise" else self.session_features

    @property
    def feature_dim(self) -> int:
        """Size of the pooled feature (what the discriminator and the router see)."""
        return self.hidden * (2 if self.bidirectional else 1)


class SessionModelOutput(NamedTuple):
    logits: torch.Tensor  # (B,) anomaly logit; higher = more anomalous
    features: torch.Tensor  # (B, feature_dim) attention-pooled GRU states
    attention: torch.Tensor  # (B, T) weight of each step in `features`; sums to 1 over real steps


class SessionModel(nn.Module):
    """GRU + time attention + head over a padded batch of template vectors (MetaLog section 3.4).

    Call `set_anchor_vectors` once after construction (the trainer does) when `config.anchors` > 0.
    """

    def __init__(self, config: SessionModelConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = SessionModelConfig(**kwargs)
        elif kwargs:
            raise ConfigError(f"SessionModel: pass a config or keyword settings, not both ({sorted(kwargs)})")
        self.config = config
        c = config
        # Frozen anchor directions (unit vectors of ANCHOR_TEXTS); a buffer, so saved with the weights.
        self.register_buffer("anchor_vectors", torch.zeros(c.anchors, c.input_dim))
        self.vector_proj = nn.Linear(c.input_dim, c.vector_features) if c.vector_features else None
        self.vector_drop = nn.Dropout(c.vector_dropout)
        self.gru = nn.GRU(
            c.gru_input_dim,
            c.hidden,
            num_layers=c.layers,
            batch_first=True,
            bidirectional=c.bidirectional,
            dropout=c.dropout if c.layers > 1 else 0.0,
        )
        d = c.feature_dim
        # Eq. 4: Q = W_q A, K = W_k A. The paper also defines V but then sums Softmax(QK^T) A_in, so V
        # is unused there; we follow the equation as written and pool the GRU states themselves.
        self.query = nn.Linear(d, c.attention_dim, bias=False)
        self.key = nn.Linear(d, c.attention_dim, bias=False)
        # Session features reach the logit by a separate linear path whose weights are kept >= 0 (softplus)
        # when monotone_rarity is on: "rarer here" can only raise the score, in every system. Why: a deep
        # head learns non-monotone rules from a few source systems that do not transfer; the sign of
        # "unusual = suspicious" does.
        # Stored divided by RARITY_GAIN: under Adam every parameter moves ~lr per step, and these
        # weights must be able to move as fast as the deep path's output scale does (gain 10).
        init = math.log(math.expm1(1.0)) / RARITY_GAIN  # softplus(gain * init) = 1
        self.rarity_weight = (
            nn.Parameter(torch.full((c.wide_dim,), init)) if c.monotone_rarity else None
        )
        head_extra = 0 if c.monotone_rarity else c.wide_dim
        # The logit's offset lives outside the bounded deep path, so bounding never clips the bias.
        self.bias = nn.Parameter(torch.zeros(1))
        self.head = nn.Sequential(
            nn.Linear(d + head_extra, c.head_hidden),
            nn.Tanh(),  # MetaLog's non-linear layer is tanh(W_n H)
            nn.Dropout(c.dropout),
            nn.Linear(c.head_hidden, 1),
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, session_features: torch.Tensor | None = None,
        deep_grad: bool = True,
    ) -> SessionModelOutput:
        """x: (B, T, input_dim + event_features); mask: (B, T) True at real steps (each row >= 1 step).

        The GRU reads [event features, anchor cosines, projected vector] per step (see the config).
        `deep_grad=False` keeps this batch's loss out of the deep path (its share of the logit is
        detached): the distillation rounds train it on the target's teacher labels only.
        """
        c = self.config
        b, t, _ = x.shape
        lengths = mask.sum(dim=1).clamp(min=1)  # (B,)
        v, f = x[..., : c.input_dim], x[..., c.input_dim :]  # (B, T, 384), (B, T, event_features)
        parts = [f] if c.rarity_in_gru else []
        if c.anchors:
            parts.append(v @ self.anchor_vectors.T)  # (B, T, K) cosine to each anchor (unit vectors)
        if self.vector_proj is not None:
            parts.append(self.vector_drop(self.vector_proj(v)))  # (B, T, vector_features)
        x = torch.cat(parts, dim=-1)  # (B, T, gru_input_dim)
        # Packing keeps the backward direction from reading padding first.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.gru(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=t)  # (B, T, D)
        q, k = self.query(h), self.key(h)  # (B, T, A)
        scores = q @ k.transpose(1, 2) / math.sqrt(c.attention_dim)  # (B, T, T)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        p = torch.softmax(scores, dim=-1)  # (B, T, T): query i attends to key j
        # Eq. 4 sums Softmax(QK^T) A over the queries; we average instead so the pooled feature does
        # not grow with the session length (sessions here run from 2 to 64 steps). Averaging the rows
        # first gives each step's weight: pooled = sum_j w_j H_j.
        qmask = mask.to(p.dtype)[:, :, None]  # (B, T, 1)
        w = (p * qmask).sum(dim=1) / lengths[:, None].to(p.dtype)  # (B, T)
        pooled = (w[:, :, None] * h).sum(dim=1)  # (B, D)
        head_in = pooled
        wide = None
        if c.session_features:
            if session_features is None:
                raise ConfigError(f"SessionModel expects {c.session_features} session features per row")
            sf = self.wide_inputs(session_features).to(pooled.dtype)  # (B, wide_dim)
            if self.rarity_weight is not None:
                # centred on 0.5 so the wide path needs no large offset (rarity is in [0, 1])
                wide = (sf - 0.5) @ self.rarity_weights()  # (B,) non-negative weights
            else:
                head_in = torch.cat([pooled, sf], dim=-1)
        logits = self.head(head_in).squeeze(-1)  # (B,)
        if c.deep_bound > 0:
            # A bounded correction: what the GRU learned from the sources' *words* may adjust the
            # rarity score but not overturn it; learned semantics transfer far less than rarity does.
            logits = c.deep_bound * torch.tanh(logits / c.deep_bound)
        if not deep_grad:
            logits = logits.detach()
        logits = logits + RARITY_GAIN * self.bias  # same gain as the wide weights (one scalar under Adam)
        if wide is not None:
            logits = logits + wide
        return SessionModelOutput(logits, pooled, w)

    def widen_deep_path(self, bound: float) -> bool:
        """Let the deep path move the logit by up to +-`bound`, starting from no contribution at all.

        Why: the general path bounds the deep path tight (what the GRU learns from the *sources'* words
        does not transfer), but distillation teaches it the *target's* words through the LLM's labels, so
        the rounds widen the bound by the LLM's measured trust. The head's last layer is zeroed first:
        its output, trained under the tight bound, is saturated noise at a wider one and would shuffle
        the ranking before any teaching (as LoRA starts its update at zero). Returns False, changing
        nothing, when `bound` would not widen a bounded path.
        """
        c = self.config
        if c.deep_bound == 0 or bound <= c.deep_bound:
            return False
        self.config = replace(c, deep_bound=float(bound))
        last = self.head[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
        return True

    def unit_floor(self) -> float | None:
        """The lowest logit a session at exactly 1 unit of surprise can get (None where it is not defined).

        Why: the `pool-surprise` threshold borrows its cut from "surprise above 1 unit". When every pool
        session is above it, the pool has no normal side to cut against, and a cut just under the pool's
        lowest (leave-one-out) score misses new sessions that repeat a pool behaviour: counted against the
        whole pool they are less rare than their pool twins, though still above 1 unit. The 1-unit point
        itself is defined where the wide path reads the surprise alone through a monotone weight (its term
        is 0 there); the bounded deep path can move any session by at most `deep_bound` below it. An
        unbounded deep path, or a wide path over other features, has no such point.
        """
        c = self.config
        if self.rarity_weight is None or c.wide_features != "surprise" or c.deep_bound <= 0:
            return None
        return float(RARITY_GAIN * self.bias.detach().cpu().item() - c.deep_bound)

    def wide_inputs(self, session_features: torch.Tensor) -> torch.Tensor:
        """(B, wide_dim) the session features the wide path reads (features are append-only: a model reads
        the first `config.session_features`, or only the surprise column)."""
        c = self.config
        if c.wide_features == "surprise":
            return session_features[:, SURPRISE_FEATURE : SURPRISE_FEATURE + 1]
        return session_features[:, : c.session_features]

    def rarity_weights(self) -> torch.Tensor:
        """(wide_dim,) the non-negative weights of the wide (rarity) path."""
        return nn.functional.softplus(RARITY_GAIN * self.rarity_weight)

    def set_anchor_vectors(self, vectors: np.ndarray | torch.Tensor) -> None:
        """Install the (anchors, input_dim) unit vectors of ANCHOR_TEXTS from the shared embedder."""
        t = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        if tuple(t.shape) != tuple(self.anchor_vectors.shape):
            raise ConfigError(f"anchor vectors {tuple(t.shape)}: expected {tuple(self.anchor_vectors.shape)}")
        self.anchor_vectors.copy_(t.to(self.anchor_vectors.device))

    # -- persistence ------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> None:
        """config.json + model.safetensors (sentence-transformers `Dense` layout)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            folder / CONFIG_NAME,
            {"format_version": FORMAT_VERSION, "model_type": "SessionModel", "model": asdict(self.config)},
        )
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        data = save(tensors, metadata={"format_version": str(FORMAT_VERSION)})
        atomic_write_bytes(folder / MODEL_WEIGHTS_NAME, data)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> SessionModel:
        folder = Path(folder)
        cfg_path, weights = folder / CONFIG_NAME, folder / MODEL_WEIGHTS_NAME
        for path in (cfg_path, weights):
            if not path.is_file():
                raise ArtifactError(f"{folder}: missing {path.name}")
        try:
            meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ArtifactError(f"{cfg_path}: not JSON ({exc})") from exc
        if meta.get("model_type") != "SessionModel":  # allow-list of class names read from disk
            raise ArtifactError(f"{cfg_path}: model_type {meta.get('model_type')!r} is not 'SessionModel'")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{cfg_path}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
        return cls.from_config_and_weights(meta["model"], weights, device)

    @classmethod
    def from_config_and_weights(
        cls, config: dict | SessionModelConfig, weights: Path, device: str | torch.device = "cpu"
    ) -> SessionModel:
        """Rebuild from a config (dict from JSON, unknown keys refused) and a safetensors file."""
        if isinstance(config, dict):
            # artifacts written before `wide_features` existed learned weights for all their session features
            config = config_from_dict(SessionModelConfig, {"wide_features": "all", **config})
        model = cls(config)
        try:
            model.load_state_dict(load_file(str(weights), device="cpu"))
        except (RuntimeError, OSError) as exc:
            raise ArtifactError(f"{weights}: cannot load weights for this config ({exc})") from exc
        return model.to(device).eval()


@torch.no_grad()
def score_encoded(
    model: SessionModel,
    enc: EncodedSessions,
    vectors: torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Logit per group (not per session: index with `enc.index`). Sorted by length to limit padding."""
    was_training = model.training
    model.eval()
    out = np.empty(len(enc), dtype=np.float32)
    order = np.argsort([len(x) for x in enc.ids], kind="stable")
    for start in range(0, len(order), batch_size):
        groups = order[start : start + batch_size]
        batch = make_batch(enc, groups, vectors, device)
        out[groups] = model(batch.x, batch.mask, batch.session_features).logits.float().cpu().numpy()
    model.train(was_training)
    return out
