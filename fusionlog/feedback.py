"""An operator's "this is normal": templates muted in a trained detector, kept beside it in `feedback.json`.

Why: a detector trained without labels flags what is rare in its adaptation pool, and some rare messages are
routine (a weekly job's line, a new release's startup banner). The SRE who reads a verdict's departures
(`fusionlog.explain`) and knows one is benign needs it to stop counting now, not after a retraining with
more logs. A muted template costs nothing to *have* in the session's surprise (its have-weight is 0, as an
LLM verdict would set it low), so a session flagged for it alone drops below 1 unit; lacking it was never a
cost unless it is everyday, and muting does not change that. The trained files are not touched: mutes are
applied when the artifact is loaded for scoring (`detect`, `serve`, the run's findings; a running `serve` or
live `detect` re-reads them when the file changes), survive a re-`fuse` into the same folder (they name
templates by text, not id), and are undone by deleting them.

A template the artifact never saw (a verdict's `new` departure) is added to the loaded table with its
vector, embedded when it was muted and stored with it, so scoring still needs no embedder for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusionlog.errors import ArtifactError
from fusionlog.io import atomic_write_json, file_stamp, read_versioned_list
from fusionlog.model import ReferenceStats

FEEDBACK_NAME = "feedback.json"
FEEDBACK_VERSION = 1


@dataclass(frozen=True)
class Mute:
    """One muted template: its text as the detector's table (or its matcher) writes it."""

    template: str
    reason: str = ""
    at: str = ""  # when it was muted (UTC, ISO 8601)
    vector: tuple[float, ...] | None = None  # for a template not in the artifact's table (embedded at mute time)

    def to_dict(self) -> dict:
        d: dict = {"template": self.template, "reason": self.reason, "at": self.at}
        if self.vector is not None:
            d["vector"] = [float(x) for x in self.vector]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Mute:
        vector = d.get("vector")
        if not isinstance(d.get("template"), str) or not d["template"].strip():
            raise ValueError("a mute needs a non-empty 'template' text")
        return cls(d["template"], str(d.get("reason", "")), str(d.get("at", "")),
                   None if vector is None else tuple(float(x) for x in vector))


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def feedback_stamp(folder: Path | str) -> tuple[int, int] | None:
    """(mtime ns, size) of the folder's feedback file, None without one: what tells a running service to
    re-read it."""
    return file_stamp(Path(folder) / FEEDBACK_NAME)


def load_mutes(folder: Path | str) -> list[Mute]:
    """The folder's mutes ([] without a feedback file); a malformed file is an `ArtifactError` naming it."""
    return read_versioned_list(Path(folder) / FEEDBACK_NAME, FEEDBACK_VERSION, "muted", Mute.from_dict, "feedback")


def save_mutes(folder: Path | str, mutes: list[Mute]) -> Path:
    path = Path(folder) / FEEDBACK_NAME
    try:
        atomic_write_json(path, {"version": FEEDBACK_VERSION, "muted": [m.to_dict() for m in mutes]})
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot write the feedback file ({exc})") from exc
    return path


def apply_mutes(detector, mutes: list[Mute]) -> frozenset[int]:
    """Mute each template in a loaded detector (in place): its have-weight becomes 0; a template not in the
    table is appended with its stored vector, as seen in no reference session. Returns the muted ids.

    Only for scoring: `fuse --resume` reloads the saved files, which never hold the mutes.
    """
    if not mutes:
        return frozenset()
    templates: list[str] = list(detector.templates_ or [])
    stats: ReferenceStats = detector.stats_
    index: dict[str, list[int]] = {}
    for i, t in enumerate(templates):  # a text may name several ids (two clusters that read alike): mute each
        index.setdefault(t, []).append(i)
    vectors = detector.vectors_
    dim = vectors.shape[1]
    weights = (np.ones(len(stats.doc_freq)) if stats.have_weights is None else stats.have_weights.copy()).tolist()
    rows = []
    muted = set()
    for m in mutes:
        ids = index.get(m.template)
        if ids is None:
            if m.vector is None or len(m.vector) != dim:
                raise ArtifactError(f"{FEEDBACK_NAME}: muted template {m.template!r} is not in the detector's "
                                    f"table and has no {dim}-dim vector; mute it again with `fusionlog mute`")
            ids = index[m.template] = [len(templates)]
            templates.append(m.template)
            rows.append(np.asarray(m.vector, dtype=np.float32))
            weights.append(0.0)
        for i in ids:
            weights[i] = 0.0
            muted.add(i)
    if rows:
        detector.vectors_ = np.vstack([vectors, np.stack(rows)]).astype(np.float32)
        detector._vectors_t = torch.from_numpy(detector.vectors_)
        detector.templates_ = templates
        df = np.concatenate([stats.doc_freq, np.zeros(len(rows), dtype=stats.doc_freq.dtype)])
        stats = ReferenceStats(stats.n_sessions, df, dict(stats.set_counts))
    detector.stats_ = stats.with_have_weights(np.asarray(weights, dtype=np.float64))
    return frozenset(muted)


@dataclass(frozen=True)
class Resolved:
    """What a user's text names in a loaded scorer: a template of its table, or one its matcher mines now."""

    template: str
    event_id: int | None  # None: not in the table (a template first seen now)
    reference_sessions: int  # reference sessions holding it (0 for a new one)
    cost: float  # what having it added to a session's surprise before muting (1.0 for a new one)


def resolve_template(scorer, text: str, raw_line: bool = False) -> Resolved:
    """The template `text` names: an id of the table, a template's exact text, or a message (with `raw_line`,
    a whole log line read as `detect` reads it) matched as `detect` would match it."""
    from fusionlog.constants import UNKNOWN_EVENT
    from fusionlog.errors import ConfigError
    from fusionlog.stream import scorer_parser

    table = list(scorer.detector.templates_ or [])
    stats = scorer.detector.stats_
    text = text.strip()
    if not text:
        raise ConfigError("give the template to mute: its text, its event_id, or a message it matches")
    number = None if raw_line else _event_id_text(text, len(table))
    if number is not None:
        eid = number
    elif text in table and not raw_line:
        eid = table.index(text)
    else:
        content = text
        if raw_line:
            parsed = scorer_parser(scorer).parse(text)
            if parsed is None:
                raise ConfigError(f"--line: the line does not fit the detector's log format {scorer.log_format!r}; "
                                  "for a line without the format's header (an exception under a record), give "
                                  "its text without --line")
            content = parsed[0]
        eid = scorer.matcher.event_id(content)
        if eid == UNKNOWN_EVENT:
            raise ConfigError("the message matches no template and the detector mines no more new ones")
        if eid >= len(table):
            template = scorer.matcher.template(eid)
            if not _literal_text(template):
                raise ConfigError(f"{template!r} has no words, only wildcards: muted, it would match every message "
                                  "the detector has not seen and make each cost nothing; give a message with words")
            return Resolved(template, None, 0, 1.0)
    df = int(stats.doc_freq[eid]) if eid < len(stats.doc_freq) else 0
    cost = float(stats.have_costs([eid], in_corpus=False)[0]) if eid < len(stats.doc_freq) else 1.0
    return Resolved(table[eid], eid, df, cost)


def _literal_text(template: str) -> str:
    """What of a template is not a wildcard (`<*>`, `<:*:>`) or blank. Why: a mute of a template the model never
    saw is matched as a known template from then on, and `<*>` alone matched every unseen message, so a new
    failure's `kernel panic` read as a muted routine line costing nothing (found by a fuzz pass, stop 31)."""
    return "".join(template.replace("<:*:>", " ").replace("<*>", " ").split())


def _event_id_text(text: str, n_table: int) -> int | None:
    """The event id a text of ASCII digits names (None for any other text: a template or a message). A number
    outside the table is a `ConfigError`, a negative one too: read as a message it would mute the template of
    every number (`<:NUM:>`), which the user did not mean; a huge one is refused by its length, before int()
    (which refuses over 4300 digits)."""
    from fusionlog.errors import ConfigError

    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        return None
    significant = digits.lstrip("0") or "0"
    if text.startswith("-") or len(significant) > len(str(n_table)) or int(significant) >= n_table:
        shown = text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"
        raise ConfigError(f"event_id {shown} is not in the detector's table (0..{n_table - 1}); a template "
                          "first seen by detect has no lasting id: give its text instead")
    return int(significant)


@dataclass(frozen=True)
class MuteChange:
    """What `add_mute` / `remove_mute` did: the template the text named, and whether the file changed."""

    resolved: Resolved
    changed: bool  # False: it was muted already (add_mute)
    mutes: tuple[Mute, ...]  # the folder's mutes after the change


def add_mute(scorer, text: str, embed: Callable[[str], np.ndarray], *, raw_line: bool = False,
             reason: str = "") -> MuteChange:
    """Mute what `text` names in the scorer's artifact folder (`resolve_template`); `embed(text)` gives the vector
    of a template the artifact never saw. Shared by `fusionlog mute` and the service's `POST /v1/mute`."""
    folder = scorer.model_dir
    mutes = load_mutes(folder)
    found = resolve_template(scorer, text, raw_line=raw_line)
    if any(m.template == found.template for m in mutes):
        return MuteChange(found, False, tuple(mutes))
    if found.event_id is None:
        vector: tuple[float, ...] | None = tuple(float(x) for x in embed(found.template))
    elif found.event_id >= scorer.n_trained:
        # in the loaded table only through a baseline (or another mute): keep its vector, so the mute outlives it
        vector = tuple(float(x) for x in scorer.detector.vectors_[found.event_id])
    else:
        vector = None
    mutes = [*mutes, Mute(found.template, reason, now_utc(), vector)]
    save_mutes(folder, mutes)
    return MuteChange(found, True, tuple(mutes))


def remove_mute(scorer, text: str, *, raw_line: bool = False) -> MuteChange:
    """Unmute what `text` names; a text that names no muted template is a `ConfigError` listing the mutes."""
    from fusionlog.errors import ConfigError

    folder = scorer.model_dir
    mutes = load_mutes(folder)
    found = resolve_template(scorer, text, raw_line=raw_line)
    kept = [m for m in mutes if m.template != found.template]
    if len(kept) == len(mutes):
        listed = "; ".join(repr(m.template) for m in mutes) or "none"
        raise ConfigError(f"{found.template!r} is not muted (muted: {listed})")
    save_mutes(folder, kept)
    return MuteChange(found, True, tuple(kept))
