"""Known-good logs counted into a trained detector's reference of normal behaviour, kept in `baseline.json`.

Why: the detector measures a session's surprise against its reference sessions (the adaptation pool it was
trained with). After a deploy the service writes messages and combinations that pool never held, and every
session that shows them is flagged until someone retrains, which needs the LLM and the sources again. A mute
(`fusionlog.feedback`) silences one template; an SRE who can vouch for a stretch of logs ("the hour after
the 2.4 rollout was healthy") needs all of what it does to stop being rare at once. Its sessions are cut and
matched exactly as `detect` would, and counted into the reference: how many sessions hold each template, and
how many hold each exact template set. Nothing is retrained: the model reads the surprise and rarity against
the reference, so the scores follow, and the unit keeps its meaning (it is relative to the reference's size).
Templates the detector never saw are stored with their vectors, so scoring still needs no embedder.

Batches stack: `--undo` removes the last one, which no later batch can depend on. The trained files are not
touched, templates are named by text (so a baseline survives a re-`fuse` into the same folder), and logs
with failures in them teach the detector that those failures are normal: only baseline what you vouch for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusionlog import watch
from fusionlog.constants import UNKNOWN_EVENT
from fusionlog.errors import ArtifactError, ConfigError, DataError
from fusionlog.io import atomic_write_json, file_stamp, read_versioned_list
from fusionlog.model import ReferenceStats

BASELINE_NAME = "baseline.json"
BASELINE_VERSION = 1
#: Distinct sessions kept to compare scores before and after a batch (memory bound; the batch counts them all).
COMPARE_SESSIONS = 100_000
#: Why lines gave no event, as the sessionizer and reader count them (named when lines vanish).
SKIP_KEYS = ("unmatched_format", "no_session_key", "empty", "decode_errors")


@dataclass(frozen=True)
class LearnedTemplate:
    """A template a batch's sessions hold, by its text, and in how many of them."""

    template: str
    sessions: int
    vector: tuple[float, ...] | None = None  # for a template not in the trained table

    def to_dict(self) -> dict:
        d: dict = {"template": self.template, "sessions": self.sessions}
        if self.vector is not None:  # float32's shortest text: half the file, the same float32 when read back
            d["vector"] = [float(str(np.float32(x))) for x in self.vector]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LearnedTemplate:
        if not isinstance(d.get("template"), str) or not d["template"]:
            raise ValueError("a learned template needs a non-empty 'template' text")
        vector = d.get("vector")
        return cls(d["template"], int(d["sessions"]), None if vector is None else tuple(float(x) for x in vector))


@dataclass(frozen=True)
class BaselineBatch:
    """One `fusionlog baseline` run: what it read and the reference counts its sessions add."""

    source: str  # the files (or stdin) it read, as the user named them
    at: str  # when (UTC, ISO 8601)
    reason: str
    lines: int
    sessions: int
    templates: tuple[LearnedTemplate, ...]
    sets: tuple[tuple[tuple[int, ...], int], ...]  # indices into `templates` -> sessions with exactly that set
    replace: bool = False  # the reference is these sessions alone from here on (the service changed)

    @property
    def new_templates(self) -> int:
        """Templates this batch brought that the trained detector never saw (those it stores a vector for)."""
        return sum(t.vector is not None for t in self.templates)

    def to_dict(self) -> dict:
        return {"source": self.source, "at": self.at, "reason": self.reason, "lines": self.lines,
                "sessions": self.sessions, "templates": [t.to_dict() for t in self.templates],
                "sets": [[list(k), n] for k, n in self.sets], "replace": self.replace}

    @classmethod
    def from_dict(cls, d: dict) -> BaselineBatch:
        templates = tuple(LearnedTemplate.from_dict(t) for t in d["templates"])
        sets = tuple((tuple(int(i) for i in k), int(n)) for k, n in d["sets"])
        if any(i < 0 or i >= len(templates) for k, _ in sets for i in k):
            raise ValueError("a template set names a template the batch does not list")
        if sum(n for _, n in sets) != int(d["sessions"]):
            raise ValueError("its template sets do not add up to its sessions")
        return cls(str(d["source"]), str(d.get("at", "")), str(d.get("reason", "")), int(d["lines"]),
                   int(d["sessions"]), templates, sets, bool(d.get("replace", False)))


def baseline_stamp(folder: Path | str) -> tuple[int, int] | None:
    """(mtime ns, size) of the folder's baseline file, None without one: what tells a running service to re-read it."""
    return file_stamp(Path(folder) / BASELINE_NAME)


def load_baseline(folder: Path | str) -> list[BaselineBatch]:
    """The folder's batches, oldest first ([] without a file); a malformed file is an `ArtifactError` naming it."""
    return read_versioned_list(Path(folder) / BASELINE_NAME, BASELINE_VERSION, "batches", BaselineBatch.from_dict,
                               "baseline")


def save_baseline(folder: Path | str, batches: list[BaselineBatch]) -> Path:
    path = Path(folder) / BASELINE_NAME
    try:
        if batches:
            atomic_write_json(path, {"version": BASELINE_VERSION, "batches": [b.to_dict() for b in batches]},
                              indent=None)  # vectors and set counts: compact
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot write the baseline file ({exc})") from exc
    return path


def apply_baseline(detector, batches: list[BaselineBatch]) -> int:
    """Count each batch's sessions into a loaded detector's reference (in place); a template not in the table is
    appended with its stored vector. Returns the number of templates appended.

    Only for scoring, as the mutes: `fuse --resume` reloads the saved files, which never hold a baseline.
    """
    if not batches:
        return 0
    templates: list[str] = list(detector.templates_ or [])
    stats: ReferenceStats = detector.stats_
    index: dict[str, int] = {}
    for i, t in enumerate(templates):  # two clusters that read alike: the first holds the count, as it matches first
        index.setdefault(t, i)
    dim = detector.vectors_.shape[1]
    rows: list[np.ndarray] = []
    for batch in batches:
        for t in batch.templates:
            if t.template in index:
                continue
            if t.vector is None or len(t.vector) != dim:
                raise ArtifactError(f"{BASELINE_NAME}: learned template {t.template!r} is not in the detector's "
                                    f"table and has no {dim}-dim vector; delete the batch and baseline again")
            index[t.template] = len(templates)
            templates.append(t.template)
            rows.append(np.asarray(t.vector, dtype=np.float32))
    counted = count_batches(stats, batches, lambda t: index[t.template], len(templates))
    weights = None
    if stats.have_weights is not None:  # an appended template is weighed as an undecided one: its rarity
        weights = np.concatenate([stats.have_weights, np.ones(len(rows))])
    if rows:
        detector.vectors_ = np.vstack([detector.vectors_, np.stack(rows)]).astype(np.float32)
        detector._vectors_t = torch.from_numpy(detector.vectors_)
        detector.templates_ = templates
    detector.stats_ = counted.with_have_weights(weights)
    return len(rows)


def count_batches(base: ReferenceStats, batches: list[BaselineBatch],
                  id_of: Callable[[LearnedTemplate], int | None], size: int) -> ReferenceStats:
    """`base` (unweighted) with the batches' sessions counted in, over template ids [0, size).

    `id_of` places each learned template; one it cannot place yet (None: a live detect has not met that text)
    is left out of the template counts and the sets, while its sessions still count. A `replace` batch drops
    everything before it.
    """
    df = np.zeros(max(size, len(base.doc_freq)), dtype=np.int64)
    df[: len(base.doc_freq)] = base.doc_freq
    sets, n_sessions = dict(base.set_counts), base.n_sessions
    for batch in batches:
        if batch.replace:  # what came before no longer counts; its templates stay in the table, seen in none
            df[:], sets, n_sessions = 0, {}, 0
        ids = [id_of(t) for t in batch.templates]
        for t, i in zip(batch.templates, ids, strict=True):
            if i is not None:
                df[i] += t.sessions
        for key, count in batch.sets:
            ids_key = tuple(sorted({ids[j] for j in key if ids[j] is not None}))
            sets[ids_key] = sets.get(ids_key, 0) + count
        n_sessions += batch.sessions
    return ReferenceStats(n_sessions, df, sets)


@dataclass
class LearnedLogs:
    """What reading known-good logs through a scorer gave: the batch, and its sessions for a before/after look."""

    batch: BaselineBatch
    distinct: Counter[tuple[int, ...]]  # the scorer's event ids of each distinct session -> how many (capped)
    texts: dict[int, str]  # the final text of every id in `distinct`
    read: dict[str, int]  # the sessionizer's and reader's counts (lines, sessions, skips, ...)


def read_known_good(scorer, lines: Iterable[str], *, source: str, reason: str = "", at: str = "",
                    replace: bool = False, limits=None, read_stats=None) -> LearnedLogs:
    """Cut `lines` into sessions and match them exactly as `detect` would with this scorer, and count them.

    A template mined now (not in the table) may widen as more lines come, so ids are turned into texts only at
    the end, and its vector is the scorer's last one. Events the matcher can no longer mine (UNKNOWN_EVENT) are
    left out of the counts, as they have no text to name them by.
    """
    from fusionlog.stream import StreamLimits, scorer_sessionizer

    sz = scorer_sessionizer(scorer, limits or StreamLimits(idle_seconds=None))
    sets: Counter[tuple[int, ...]] = Counter()
    distinct: Counter[tuple[int, ...]] = Counter()
    n = 0

    def take(done) -> None:
        nonlocal n
        for s in done:
            n += 1
            sets[tuple(sorted({e for e in s.event_ids if e != UNKNOWN_EVENT}))] += 1
            seq = tuple(s.event_ids)
            if seq in distinct or len(distinct) < COMPARE_SESSIONS:
                distinct[seq] += 1

    for line in lines:
        take(sz.feed(line))
    take(sz.flush())
    read = sz.stats.to_dict()
    if read_stats is not None:
        read.update(decode_errors=read_stats.decode_errors, empty_files=read_stats.empty_files)
    if not n:
        raise DataError(f"{source}: no session read from {read['lines']} line(s) ({skip_reasons(read)}); nothing "
                        f"learned. The detector reads lines with log format {scorer.log_format!r}")
    trained = scorer.n_trained  # ids below it are the trained table's; above, a baseline's, a mute's or mined now
    text_of = {e: scorer.template(e) for key in sets for e in key}
    index: dict[str, int] = {}  # text -> its index in the batch (two ids that came to read alike are one)
    vectors: dict[int, tuple[float, ...] | None] = {}
    text_sets: Counter[tuple[int, ...]] = Counter()
    for key, count in sets.items():
        for e in key:
            j = index.setdefault(text_of[e], len(index))
            if e < trained:
                vectors[j] = None  # the trained table has it: no vector to keep
            elif j not in vectors:
                vectors[j] = tuple(float(x) for x in scorer.detector.vectors_[e])
        text_sets[tuple(sorted({index[text_of[e]] for e in key}))] += count
    per_template: Counter[int] = Counter()
    for key, count in text_sets.items():
        for j in key:
            per_template[j] += count
    learned = [LearnedTemplate(t, per_template[j], vectors[j]) for t, j in index.items()]
    batch_sets = tuple(text_sets.items())
    batch = BaselineBatch(source, at, reason, int(read["lines"]), n, tuple(learned), batch_sets, replace)
    texts = {e: scorer.template(e) for seq in distinct for e in seq if e != UNKNOWN_EVENT}
    return LearnedLogs(batch, distinct, texts, read)


@dataclass
class BaselineOutcome:
    """What one learned batch did: what the logs gave, and how many of their own sessions were flagged before and
    after (the one figure that says whether the batch taught what the user meant)."""

    batch: BaselineBatch
    read: dict[str, int]
    compared: int  # sessions the before/after counts cover (all, unless over COMPARE_SESSIONS distinct)
    distinct: int
    before: int
    after: int
    reference_before: int
    reference_after: int
    absent: list[str]  # everyday templates of the old reference none of the batch's sessions holds (not with replace)
    batches: int  # in the file after the write

    def notes(self, redo: str, grow: str) -> list[str]:
        """The two mistakes the counts can show: adding when the service changed, replacing with too little.

        `redo` says how to undo and replace, `grow` how to add logs, in the words of the caller (CLI or HTTP).
        """
        out = []
        if self.absent:
            shown = "; ".join(repr(t[:100]) for t in self.absent[:3])
            shown += f" (+{len(self.absent) - 3} more)" if len(self.absent) > 3 else ""
            out.append(f"{len(self.absent)} template(s) in most reference sessions are in none of these: {shown}. If "
                       "the service changed (a deploy renamed or dropped them), every new session still lacks them: "
                       f"{redo}")
        if self.batch.replace and self.batch.sessions < self.reference_before:
            out.append(f"the reference shrank from {self.reference_before} to {self.batch.sessions} sessions, so one "
                       "session is a larger share of it and more sessions cross the cut until it grows: "
                       f"{grow}")
        return out

    def summary(self) -> str:
        b = self.batch
        of = f"{self.compared}" + ("" if self.compared == b.sessions else f" (the first {self.distinct} distinct)")
        skipped = self.read.get("skipped", 0)
        return (f"learned {b.sessions} sessions ({b.lines} lines"
                + (f", {skipped} skipped: {skip_reasons(self.read)}" if skipped else "")
                + f") as normal: {len(b.templates)} templates, {b.new_templates} not in its trained table; its "
                f"reference holds {self.reference_after} sessions (was {self.reference_before}). Of these {of} "
                f"sessions it flagged {self.before} before, {self.after} now")

    def to_dict(self) -> dict:
        b = self.batch
        return {"sessions": b.sessions, "lines": b.lines, "skipped": int(self.read.get("skipped", 0)),
                "skip_reasons": {k: int(self.read[k]) for k in SKIP_KEYS if self.read.get(k)},
                "templates": len(b.templates), "new_templates": b.new_templates, "replace": b.replace,
                "reference_sessions": self.reference_after, "reference_sessions_before": self.reference_before,
                "compared_sessions": self.compared, "flagged_before": self.before, "flagged_after": self.after,
                "batches": self.batches}


def learn_baseline(folder: Path | str, scorer, lines: Iterable[str], reload: Callable[[], object], *, source: str,
                   reason: str = "", at: str = "", replace: bool = False, read_stats=None) -> BaselineOutcome:
    """Read known-good `lines` with `scorer` (the detector as `folder` holds it now), append the batch to the
    folder's baseline file and measure it: `reload()` returns a scorer that has applied the new file.

    The CLI reloads from disk; the HTTP service refreshes its live scorer. The file is read again just before the
    write, so a batch another process wrote meanwhile is kept.
    """
    learned = read_known_good(scorer, lines, source=source, reason=reason, at=at, replace=replace,
                              read_stats=read_stats)
    batch = learned.batch
    before = flagged(scorer, learned.distinct)
    stats = scorer.detector.stats_
    reference = int(stats.n_sessions)
    absent = [] if replace else everyday_absent(stats, list(scorer.detector.templates_), batch)
    batches = [*load_baseline(folder), batch]
    save_baseline(folder, batches)
    after_scorer = reload()
    after = flagged(after_scorer, renumber(learned.distinct, learned.texts, after_scorer))
    return BaselineOutcome(batch, learned.read, sum(learned.distinct.values()), len(learned.distinct), before, after,
                           reference, int(after_scorer.detector.stats_.n_sessions), absent, len(batches))


def undo_baseline(folder: Path | str) -> tuple[BaselineBatch, int]:
    """Remove the folder's last batch; (it, batches left). No batch is a `ConfigError`."""
    batches = load_baseline(folder)
    if not batches:
        raise ConfigError(f"{folder}: no baseline batch to undo")
    gone = batches.pop()
    save_baseline(folder, batches)
    return gone, len(batches)


def skip_reasons(read: dict) -> str:
    """'no session key 727, unmatched format 3': which setting to check when lines vanish."""
    return ", ".join(watch.skip_reasons(read, SKIP_KEYS)) or "none skipped"


def flagged(scorer, sessions: Counter[tuple[int, ...]]) -> int:
    """How many of these sessions (with their counts) the scorer flags."""
    if not sessions:
        return 0
    seqs = list(sessions)
    scores, _ = scorer.score_sessions([list(s) for s in seqs])
    return int(sum(c for s, c in zip(scores, sessions.values(), strict=True) if s > scorer.threshold))


def renumber(sessions: Counter[tuple[int, ...]], texts: dict[int, str], scorer) -> Counter[tuple[int, ...]]:
    """The same sessions in another scorer's ids (one that loaded the batch: every learned text is in its table)."""
    index: dict[str, int] = {}
    for i, t in enumerate(scorer.detector.templates_):
        index.setdefault(t, i)
    out: Counter[tuple[int, ...]] = Counter()
    for seq, count in sessions.items():
        out[tuple(index.get(texts.get(e, ""), UNKNOWN_EVENT) for e in seq)] += count
    return out


def everyday_absent(stats: ReferenceStats, templates: list[str], batch: BaselineBatch) -> list[str]:
    """Templates in more than half the reference's sessions that none of the batch's sessions holds.

    Why: after a deploy renames a message, adding the new hour to the old reference leaves every new session
    lacking the old everyday step (and having a new one the old sessions lack), so they stay flagged; the
    user needs to hear that the service changed and `--replace` fits, not find out from the next alerts.
    """
    held = {t.template for t in batch.templates}
    n = stats.n_sessions
    everyday = np.flatnonzero(2 * stats.doc_freq[: len(templates)] > n)
    return [templates[i] for i in everyday if templates[i] not in held]
