"""A detector artifact loaded for serving: the `SessionScorer` behind `fusionlog detect` and the HTTP service.

Loads safetensors + JSON only, and imports neither the trainers, the router, the LLM code, vllm nor
peft: serving must run where only the small model is installed. Raw lines are matched against the
artifact's template list (`TemplateMatcher`, which also reads artifacts trained on template sequences,
such as `openstack`); a line that matches nothing becomes a new template, embedded on the fly (the
embedding model is loaded only then) and counted.

Speed (issue 7): the network runs on one intra-op thread (`torch_threads`) and each distinct model input
is scored once, then served from a bounded LRU (`ScoreCache`); real logs repeat the same sessions.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fusionlog.baseline import apply_baseline, baseline_stamp, count_batches, load_baseline
from fusionlog.config import SessionRule, config_from_dict
from fusionlog.constants import DRAIN_STATE_NAME, REPORT_NAME, UNKNOWN_EVENT
from fusionlog.errors import ArtifactError, ConfigError
from fusionlog.explain import explain_surprise
from fusionlog.feedback import apply_mutes, feedback_stamp, load_mutes
from fusionlog.model import ReferenceStats, encode_sessions, input_key, make_batch
from fusionlog.parsing import saved_parse_config
from fusionlog.scoring import SessionVerdict
from fusionlog.threads import torch_threads
from fusionlog.types import Session

logger = logging.getLogger(__name__)

SERVING_NAME = "serving.json"
NEAREST_NAME = "nearest_source.json"
TOP_TEMPLATES = 3
#: Torch intra-op threads while scoring. Why 1: the GRU runs a few small ops per time step, each an
#: OpenMP parallel region; with 2 threads on a shared 2-core machine every region waits for the second
#: thread to be scheduled: 256 sessions of 20 events took 2.3 s with 2 threads and 0.1 s with 1 (issue 7).
SCORE_THREADS = 1
#: Distinct model inputs whose score the scorer remembers (at most about 1 KB each: two id tuples of at
#: most max_len ids and the attention row).
CACHE_SIZE = 32_768

#: `input_key` + the vector epochs of the session's detection-time templates (see `ScoreCache`).
CacheKey = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
#: (logit, read-only attention over the capped ids)
CachedScore = tuple[float, np.ndarray]


class ScoreCache:
    """Bounded LRU: model-input key → (logit, attention), with hit and miss counters. (The scorer keeps its
    explanations in a second one, keyed by the key's distinct ids and row epochs.)

    Why a hit is exact: for one loaded artifact the model, its `ReferenceStats` and `max_len` are fixed,
    so a session's input is a function of `input_key` (capped ids → step rarities and table rows; distinct
    ids → session features) and of the vector rows of its ids. Rows of artifact templates (ids below
    `matcher.n_known`) never change: growing the table for new templates copies them unchanged. Rows of
    detection-time templates do change: a new id reads the zero row until embedded, and a template widened
    by later lines is re-embedded. So the key also carries, per detection-time id in the session, the epoch
    of its row (bumped at every embedding); a session of artifact templates only carries none and stays
    valid for the life of the scorer, while an entry that read an older row is never hit again and ages
    out. Swapping the model or stats in place needs `clear()`.

    Counters: every scored session is a hit (no network run of its own: a cached input, or a repeat of an
    input earlier in the same call) or a miss. With `max_entries=0` nothing is stored, and the hits are the
    in-call repeats only (which the scorer always ran once, as `encode_sessions` groups them).
    Not thread-safe, like the scorer: callers hold the scorer's lock.
    """

    def __init__(self, max_entries: int = CACHE_SIZE) -> None:
        if max_entries < 0:
            raise ConfigError(f"ScoreCache.max_entries={max_entries}: must be >= 0 (0 = off)")
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, CachedScore] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> CachedScore | None:
        """The cached result (now the most recently used), counting a hit or a miss."""
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def record_hit(self) -> None:
        """Count a session answered without a network run of its own (a repeat within one call)."""
        self.hits += 1

    def put(self, key: CacheKey, value: CachedScore) -> None:
        if self.max_entries == 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()

    def stats(self) -> dict[str, int]:
        return {"entries": len(self), "max_entries": self.max_entries, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}


def _parse_config(model_dir: Path):
    """The Drain settings the artifact's templates were parsed with (its masks among them), where it kept them.

    Why: a system's own masks (`RawSpec.masks`, `--mask`) put names like <:HOST:> in templates; the matcher
    needs their regexes to read new lines as training did. Session-trained artifacts have no Drain state.
    """
    state = _read_json(model_dir / DRAIN_STATE_NAME, {})
    try:
        return saved_parse_config(state["config"]) if "config" in state else None
    except (TypeError, ValueError, ConfigError) as exc:
        raise ArtifactError(f"{model_dir / DRAIN_STATE_NAME}: malformed parse config ({exc})") from exc


def _check_reading(model_dir: Path, log_format: str, line_filter: str, strip: str) -> None:
    """Fail at load, with the file named, rather than on the first line read."""
    from fusionlog.stream import HeaderParser

    try:
        HeaderParser(log_format, line_filter, strip)
    except ConfigError as exc:
        raise ArtifactError(f"{model_dir / SERVING_NAME}: {exc}") from exc


class ArtifactScorer:
    """Implements `fusionlog.scoring.SessionScorer` over a saved Detector folder."""

    def __init__(self, model_dir: Path | str, embedder=None, *, threads: int | None = SCORE_THREADS,
                 cache_size: int = CACHE_SIZE) -> None:
        """`threads`: torch intra-op threads while scoring (None = torch's setting); `cache_size`: 0 = no cache."""
        from fusionlog.detector import Detector
        from fusionlog.matcher import TemplateMatcher

        self.model_dir = Path(model_dir)
        self.detector = Detector.from_pretrained(self.model_dir)
        if self.detector.templates_ is None:
            raise ArtifactError(f"{self.model_dir}: no templates.json; cannot match raw lines")
        serving = _read_json(self.model_dir / SERVING_NAME, {})
        rule = serving.get("rule")
        self.rule = config_from_dict(SessionRule, rule) if rule else SessionRule("lines", window=20)
        self.log_format = serving.get("log_format") or "<Content>"
        # the system's continuation-line filter and content prefix cut (RawSpec), as training read lines
        self.line_filter: str = serving.get("line_filter") or ""
        self.strip: str = serving.get("strip") or ""
        _check_reading(self.model_dir, self.log_format, self.line_filter, self.strip)
        self.threshold = float(self.detector.threshold_)
        # an operator's known-good logs (`fusionlog baseline`), then mutes (`fusionlog mute`): applied before the
        # matcher is built, so a learned or muted template the artifact never saw is matched as a known one
        det = self.detector
        self._trained = (list(det.templates_), det.vectors_, det.stats_)  # as saved, before any baseline or mute
        self._feedback_stamp = feedback_stamp(self.model_dir)
        self._baseline_stamp = baseline_stamp(self.model_dir)
        self.baseline = load_baseline(self.model_dir)
        apply_baseline(det, self.baseline)
        self.mutes = load_mutes(self.model_dir)
        self.muted_ids = apply_mutes(det, self.mutes)
        self._unmuted = _without_mutes(det.stats_, self._trained[2])
        self._live_pending: frozenset[str] | None = None  # set by an in-place refresh (`refresh_feedback`)
        self._baseline_pending: frozenset[str] = frozenset()  # learned texts a live detect has not met yet
        self.matcher = TemplateMatcher(list(det.templates_), _parse_config(self.model_dir))
        # the share of its own pool the artifact flagged in training: what a flood of flags is judged against
        self.pool_flagged_share = _pool_flagged_share(self.model_dir)
        nearest = _read_json(self.model_dir / NEAREST_NAME, {"nearest": []})["nearest"]
        self.nearest: list[dict | None] = list(nearest)
        self._embedder = embedder
        self.new_templates_embedded = 0
        if threads is not None and threads < 1:
            raise ConfigError(f"ArtifactScorer threads={threads}: must be >= 1 (or None)")
        self.threads = threads
        self.cache = ScoreCache(cache_size)
        # (distinct ids, row epochs) of a session's `CacheKey` -> (surprise, departures, reason part)
        # (`explain_surprise`, rendered): a function of the ids, the fixed stats and the templates' texts, which
        # change only with a detection-time template's row, as the scores do; so a repeated template set is not
        # split again (detect ran at 35% of its speed without it)
        self._why = ScoreCache(cache_size)
        self._row_epoch: dict[int, int] = {}  # detection-time template id -> times its row was (re)embedded
        self._last_keys: list[CacheKey] = []  # of the sessions `score_sessions` scored last

    @property
    def n_trained(self) -> int:
        """Templates of the trained table; ids from here on came with a baseline, a mute, or detection."""
        return len(self._trained[0])

    # -- parsing ---------------------------------------------------------------------------------
    def event_id(self, content: str) -> int:
        eid = self.matcher.event_id(content)
        new = self.matcher.take_new()
        if new:
            self._embed_new(new)
            if self._baseline_pending and any(t in self._baseline_pending for _, t in new):
                self._baseline_in_place(self.baseline)  # a learned text was just mined: count it (mutes too)
            pending = self._live_pending
            if pending is not None and any(t in pending or i in self.muted_ids for i, t in new):
                self._mute_in_place(self.mutes)  # a muted text was just mined, or a muted template widened
        return eid

    def template(self, event_id: int) -> str:
        if event_id == UNKNOWN_EVENT:
            return "<unknown template>"
        return self.matcher.template(event_id)

    def embed_text(self, text: str) -> np.ndarray:
        """The shared-space vector of one template text (a mute of a template the artifact never saw)."""
        from fusionlog.embedding import Embedder

        if self._embedder is None:
            self._embedder = Embedder()
        return self._embedder.encode([text])[0]

    def _embed_new(self, new: list[tuple[int, str]]) -> None:
        """Grow the vector table for templates first seen now (or widened since their first line)."""
        from fusionlog.embedding import Embedder, grow_vectors

        if self._embedder is None:
            self._embedder = Embedder()
        table = grow_vectors(self.detector.vectors_, new, self._embedder)
        self.detector.vectors_ = table
        self.detector._vectors_t = torch.from_numpy(table)
        self.new_templates_embedded += len(new)
        for eid, _ in new:  # cached scores that read the old row must not be hit again (see ScoreCache)
            self._row_epoch[eid] = self._row_epoch.get(eid, 0) + 1

    # -- scoring ---------------------------------------------------------------------------------
    def score_sessions(self, sessions: list[list[int]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores (n,) and, per session, attention over its model input (capped event ids).

        Each distinct model input runs through the network once: repeats within the call are scored
        once, and inputs seen before come from `cache` (see `ScoreCache` for why a hit is exact).
        """
        if not sessions:
            self._last_keys = []
            return np.zeros(0, np.float32), []
        keys = [self._cache_key(ids) for ids in sessions]
        found: dict[CacheKey, CachedScore] = {}
        todo: dict[CacheKey, list[int]] = {}
        for key, ids in zip(keys, sessions, strict=True):
            if key in found or key in todo:
                self.cache.record_hit()  # a repeat within this call skips the network too
                continue
            cached = self.cache.get(key)
            if cached is None:
                todo[key] = ids
            else:
                found[key] = cached
        if todo:
            for key, result in zip(todo, self._score_uncached(list(todo.values())), strict=True):
                found[key] = result
                self.cache.put(key, result)
        self._last_keys = keys
        scores = np.array([found[key][0] for key in keys], dtype=np.float32)
        return scores, [found[key][1] for key in keys]

    def _cache_key(self, ids: Sequence[int]) -> CacheKey:
        """`input_key` plus the vector-table epoch of each detection-time template the session holds."""
        capped, distinct = input_key(ids, self.detector.model_.config.max_len)
        n_known = self.matcher.n_known
        if not distinct or distinct[-1] < n_known:  # sorted: only artifact templates (or unknown, -1)
            return capped, distinct, ()
        return capped, distinct, tuple(self._row_epoch.get(e, 0) for e in distinct if e >= n_known)

    def _score_uncached(self, sessions: list[list[int]]) -> list[CachedScore]:
        """Run the network on distinct sessions, in length-sorted batches (less padding) on `threads` threads."""
        det = self.detector
        objs = [Session(det.system_, str(i), list(ids)) for i, ids in enumerate(sessions)]
        enc = encode_sessions(objs, det.stats_, det.model_.config.max_len, in_corpus=False, system=det.system_)
        out: list[CachedScore | None] = [None] * len(enc)
        order = np.argsort([len(x) for x in enc.ids], kind="stable")
        with torch.no_grad(), torch_threads(self.threads):
            for start in range(0, len(order), det.score_batch_size):
                groups = order[start : start + det.score_batch_size]
                b = make_batch(enc, groups, det._vectors_t)
                res = det.model_(b.x, b.mask, b.session_features)
                logits = res.logits.float().numpy()
                w = res.attention.float().numpy()
                for row, g in enumerate(groups):
                    attn = w[row, : len(enc.ids[g])].copy()  # a copy: the cache must not pin the batch
                    attn.setflags(write=False)  # shared by every later hit
                    out[g] = (float(logits[row]), attn)
        return [out[g] for g in enc.index]  # type: ignore[misc]

    def refresh_feedback(self, keep_ids: bool = False) -> bool:
        """Re-read the mutes (and the baseline) if `feedback.json` (`baseline.json`) changed since they were read;
        True when something was applied.

        `keep_ids=False` (the HTTP service, which keeps no session between requests): reloaded as at start, the
        matcher rebuilt, so templates mined at detection time get new ids. `keep_ids=True` (a live `detect`,
        whose open sessions hold ids): ids stay; a muted text is matched against the table and the templates
        mined so far, and against each one mined later, and the baseline is recounted over the ids in use (a
        learned text not met yet is counted once it is mined). An unreadable file (caught mid-edit) keeps what was
        read before in force and warns once; its next change is read again.
        """
        from fusionlog.matcher import TemplateMatcher

        stamp, base_stamp = feedback_stamp(self.model_dir), baseline_stamp(self.model_dir)
        if stamp == self._feedback_stamp and base_stamp == self._baseline_stamp:
            return False
        mutes, baseline = self.mutes, self.baseline
        if stamp != self._feedback_stamp:
            self._feedback_stamp = stamp
            mutes = self._reread(load_mutes, self.mutes, "mute(s)")
        if base_stamp != self._baseline_stamp:
            self._baseline_stamp = base_stamp
            baseline = self._reread(load_baseline, self.baseline, "baseline batch(es)")
        if mutes == self.mutes and baseline == self.baseline:
            return False
        if keep_ids:
            self.mutes = mutes
            self._baseline_in_place(baseline)  # recounts, then weighs the mutes (`_mute_in_place`)
            logger.info("%s: %d muted template(s), %d baseline batch(es) now", self.model_dir, len(mutes),
                        len(baseline))
            return True
        det = self.detector
        templates, vectors, stats = self._trained
        det.templates_, det.vectors_, det.stats_ = list(templates), vectors, stats
        det._vectors_t = torch.from_numpy(vectors)
        self.baseline = baseline
        apply_baseline(det, baseline)
        self.mutes = mutes
        self.muted_ids = apply_mutes(det, mutes)
        self._unmuted = _without_mutes(det.stats_, stats)
        self._live_pending = None
        self.matcher = TemplateMatcher(list(det.templates_), _parse_config(self.model_dir))
        self._row_epoch.clear()
        self.clear_cache()
        logger.info("%s: %d muted template(s), %d baseline batch(es) now", self.model_dir, len(mutes), len(baseline))
        return True

    def _reread(self, load, current: list, what: str) -> list:
        """`load(model_dir)`, or what was read before (warned) when the file is caught mid-edit."""
        try:
            return load(self.model_dir)
        except ArtifactError as exc:
            logger.warning("%s; the %d %s read before stay in force", exc, len(current), what)
            return current

    def _baseline_in_place(self, batches: list) -> None:
        """Recount the reference with these baseline batches over the ids in use, without renumbering (a live
        detect's open sessions hold them): a learned text is placed on the table's or a mined template's id with
        that text; one not met yet waits in `_baseline_pending` for the miner. The mutes are then weighed again."""
        size = self.matcher.n_known + self.matcher.n_new
        first: dict[str, int] = {}
        for i in range(size):
            first.setdefault(self.matcher.template(i), i)
        waiting: set[str] = set()

        def id_of(t) -> int | None:
            i = first.get(t.template)
            if i is None:
                waiting.add(t.template)
            return i

        trained = self._trained[2]
        counted = count_batches(trained, batches, id_of, size)
        weights = np.ones(len(counted.doc_freq))
        if trained.have_weights is not None:
            weights[: len(trained.have_weights)] = trained.have_weights
        self._unmuted = counted.with_have_weights(weights)
        self.baseline = batches
        self._baseline_pending = frozenset(waiting)
        self._mute_in_place(self.mutes)

    def _mute_in_place(self, mutes: list) -> None:
        """Weigh every template whose text is muted 0, without renumbering: table ids, and templates mined at
        detection time (the reference stats grow to their ids, seen in no reference session: a cost of 1 each,
        as before). Texts not met yet wait in `_live_pending` for the miner."""
        texts = {m.template for m in mutes}
        n_known = self.matcher.n_known
        ids = {i for i in range(n_known) if self.matcher.template(i) in texts}
        ids |= {i for i in range(n_known, n_known + self.matcher.n_new) if self.matcher.template(i) in texts}
        base = self._unmuted
        size = max([len(base.doc_freq), *(i + 1 for i in ids)])
        df = np.zeros(size, dtype=base.doc_freq.dtype)
        df[: len(base.doc_freq)] = base.doc_freq
        weights = np.ones(size)
        weights[: len(base.doc_freq)] = base.have_weights if base.have_weights is not None else 1.0
        weights[sorted(ids)] = 0.0
        self.detector.stats_ = ReferenceStats(base.n_sessions, df, base.set_counts).with_have_weights(weights)
        self.mutes = mutes
        self.muted_ids = frozenset(ids)
        self._live_pending = frozenset(texts - {self.matcher.template(i) for i in ids})
        self.clear_cache()

    def clear_cache(self) -> None:
        """Forget cached scores; needed only after swapping the model, its stats or known vectors in place."""
        self.cache.clear()
        self._why.clear()

    def explain(self, key: CacheKey) -> tuple[float, list[dict], str]:
        """(surprise, departures as the verdict lists them, the reason's sentence on them) of the session whose
        `CacheKey` this is; the departures are fresh dicts (examples are attached to them)."""
        why_key = key[1:]  # the distinct ids and their row epochs: what the surprise and the texts read
        hit = self._why.get(why_key)
        if hit is None:
            why = explain_surprise(self.detector.stats_, key[1])
            hit = (why.surprise, tuple(d.to_dict(self.template) for d in why.top), why.summary(self.template))
            self._why.put(why_key, hit)
        return hit[0], [dict(d) for d in hit[1]], hit[2]

    def verdicts(self, keys: list[str], sessions: list[list[int]]) -> list[SessionVerdict]:
        scores, attn = self.score_sessions(sessions)
        inputs = self._last_keys if sessions else []
        out = []
        for key, ids, score, w, input_k in zip(keys, sessions, scores, attn, inputs, strict=True):
            out.append(self._verdict(key, ids, float(score), w, input_k))
        return out

    def _verdict(self, key: str, ids: Sequence[int], score: float, w: np.ndarray, input_k: CacheKey) -> SessionVerdict:
        weight: dict[int, float] = {}
        for eid, a in zip(input_k[0], w.tolist(), strict=True):  # the capped ids the attention is over
            weight[eid] = weight.get(eid, 0.0) + float(a)
        top = sorted(weight.items(), key=lambda kv: -kv[1])[:TOP_TEMPLATES]
        top_templates = [{"template": self.template(e), "attention": round(a, 4), "event_id": e} for e, a in top]
        nearest = None
        if top and 0 <= top[0][0] < len(self.nearest) and self.nearest[top[0][0]]:
            nearest = self.nearest[top[0][0]].get("text")
        n_known = self.matcher.n_known
        new = len({e for e in ids if e >= n_known or e == UNKNOWN_EVENT})
        unseen_pool = len({e for e in ids if 0 <= e < n_known and self.detector.stats_.doc_freq[e] == 0
                           and e not in self.muted_ids})
        anomalous = score > self.threshold
        surprise, departures, why = self.explain(input_k)
        parts = [f"score {score:.3f} {'>' if anomalous else '<='} threshold {self.threshold:.3f}", why]
        if new:
            parts.append(f"{new} template(s) never seen in training")
        if unseen_pool:
            parts.append(f"{unseen_pool} template(s) absent from the adaptation pool")
        muted = len(self.muted_ids.intersection(ids)) if self.muted_ids else 0
        if muted:
            parts.append(f"{muted} muted template(s) not counted")
        return SessionVerdict(key, score, anomalous, len(ids), top_templates, nearest, "; ".join(parts), new,
                              surprise, departures)


def _without_mutes(loaded: ReferenceStats, trained: ReferenceStats) -> ReferenceStats:
    """The loaded stats (the table grown by muted never-seen templates) with the trained weights, none muted."""
    n = len(loaded.doc_freq)
    weights = np.ones(n)
    if trained.have_weights is not None:
        weights[: len(trained.have_weights)] = trained.have_weights
    return ReferenceStats(loaded.n_sessions, loaded.doc_freq, loaded.set_counts).with_have_weights(weights)


def _pool_flagged_share(model_dir: Path) -> float | None:
    """report.json's findings.flagged_share (None for an artifact without one: the report is informational)."""
    try:
        return float(_read_json(model_dir / REPORT_NAME, {})["findings"]["flagged_share"])
    except (ArtifactError, KeyError, TypeError, ValueError):
        return None


def load_scorer(model_dir: Path | str, *, threads: int | None = SCORE_THREADS,
                cache_size: int = CACHE_SIZE) -> ArtifactScorer:
    return ArtifactScorer(model_dir, threads=threads, cache_size=cache_size)


def _read_json(path: Path, default):
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
