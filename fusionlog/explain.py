"""Why a session scored as it did: its surprise split into the templates that make it up.

Why not attention: the default model ranks by the session's set surprise (`ReferenceStats.surprise`) with the
GRU bounded to ±0.01 beside it, so its attention weights say what the GRU read, not what moved the score.
Measured on the Zookeeper-with-traces artifact (404 windows, 150 flagged): score and surprise rank the
windows alike (Spearman 0.9999), while the template with most attention was the costliest template a
flagged window has in only 46 of 150. An SRE who reads "most attention on X" and mutes X mutes the wrong
thing. The surprise is a sum with one term per template of the system, so it splits exactly: what the
session has that is rare here, what it has that the detector never saw, and the everyday steps it lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fusionlog.model import ReferenceStats

#: Departures listed per verdict (the rest is summed as `rest`).
TOP_DEPARTURES = 5
#: Characters of a template quoted in a verdict's one-line reason (the departures carry it whole).
REASON_TEMPLATE_CHARS = 120
#: Kinds of departure, as the verdict names them.
HAS, NEW, LACKS = "has", "new", "lacks"


@dataclass(frozen=True)
class Departure:
    """One template's share of a session's surprise, in units of one never-seen template."""

    event_id: int  # the template's id in the detector's table (-1: a line no template matched)
    kind: str  # HAS (rare here), NEW (not in the reference table: 1 unit), LACKS (a step most sessions have)
    cost: float

    def to_dict(self, template: Callable[[int], str]) -> dict:
        return {"template": template(self.event_id), "event_id": self.event_id, "kind": self.kind,
                "cost": round(self.cost, 3)}


@dataclass(frozen=True)
class SurpriseExplanation:
    """A session's surprise and its largest terms; `sum(d.cost for d in top) + rest == surprise`."""

    surprise: float
    top: tuple[Departure, ...]
    rest: float  # the terms not listed (mostly many small lacks of rare templates)

    def summary(self, template: Callable[[int], str], shown: int = 3) -> str:
        """`2.41 units of surprise: has rare 'X' (1.00), lacks usual 'Y' (0.93), 0.12 more from other templates`."""
        words = {HAS: "has rare", NEW: "has new", LACKS: "lacks usual"}
        parts = [f"{words[d.kind]} '{_cut(template(d.event_id))}' ({d.cost:.2f})" for d in self.top[:shown]]
        other = self.rest + sum(d.cost for d in self.top[shown:])
        if other >= 0.05:
            parts.append(f"{other:.2f} more from other templates")
        head = f"{self.surprise:.2f} units of surprise"
        return f"{head}: {', '.join(parts)}" if parts else head


def explain_surprise(stats: ReferenceStats, ids: Sequence[int], in_corpus: bool = False,
                     top: int = TOP_DEPARTURES) -> SurpriseExplanation:
    """Split `stats.surprise(ids, in_corpus)` into per-template terms and keep the `top` largest.

    The same terms as `ReferenceStats.surprise`, so the parts add up to it: having a table template costs
    its rarity here (times its LLM weight, if any), an id outside the table costs 1, lacking a template costs
    the rarity of lacking it. Terms under 0.005 units, and lacks of templates in at most half the reference
    sessions, are never listed.
    """
    key = sorted({int(e) for e in ids})
    in_corpus = stats.counts_itself(key, in_corpus)  # a pool session a trimmed corpus left out reads as new
    n = len(stats.doc_freq)
    present = [e for e in key if 0 <= e < n]
    unknown = [e for e in key if not 0 <= e < n]
    total = stats.surprise(key, in_corpus)
    if stats.n_sessions <= 1 or n == 0:  # no reference: every template counts 1 (as `surprise` says)
        terms = [Departure(e, NEW, 1.0) for e in key]
        return SurpriseExplanation(total, tuple(terms[:top]), float(len(terms[top:])))
    terms = [Departure(e, HAS, float(c)) for e, c in zip(present, stats.have_costs(present, in_corpus), strict=True)]
    terms += [Departure(e, NEW, 1.0) for e in unknown]
    lack = np.array(stats.lack_costs(in_corpus), dtype=np.float64)
    lack[present] = 0.0
    # only a step most sessions have is named: lacking any of the many rare templates is the usual case, and
    # their small costs are left in `rest`
    lack[2 * stats.doc_freq <= stats.n_sessions] = 0.0
    if top > 0:
        biggest = np.argsort(-lack, kind="stable")[:top]
        terms += [Departure(int(e), LACKS, float(lack[e])) for e in biggest]
    listed = sorted((t for t in terms if t.cost >= 0.005), key=lambda t: (-t.cost, t.kind, t.event_id))[:top]
    rest = max(0.0, total - sum(t.cost for t in listed))
    return SurpriseExplanation(total, tuple(listed), rest)


def largest_departure(departures: Sequence[dict]) -> tuple[str, str] | None:
    """(kind, template) of a verdict's first (largest) departure, None without one: what the digests of
    flagged sessions count (`detect`'s closing summary, the run's report)."""
    return (departures[0]["kind"], departures[0]["template"]) if departures else None


def _cut(text: str, width: int = REASON_TEMPLATE_CHARS) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
