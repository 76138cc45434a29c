"""The contract between a trained detector and the things that serve it (CLI `detect`, HTTP service).

Serving code depends only on this protocol, so it never imports training code, the router or an LLM.
`fusionlog.detector` provides the concrete implementation loaded from an artifact directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fusionlog.config import SessionRule


@dataclass
class SessionVerdict:
    """What a user sees for one finished session."""

    key: str
    score: float  # higher = more anomalous
    anomalous: bool
    events: int
    top_templates: list[dict] = field(default_factory=list)  # [{"template", "attention"}], most attention first
    nearest_source_template: str | None = None
    reason: str = ""
    new_templates: int = 0  # templates first seen at detection time (embedded on the fly)
    surprise: float | None = None  # units of one never-seen template (`fusionlog.explain`); what the score ranks by
    # [{"template", "event_id", "kind": has|new|lacks, "cost"}], the largest terms of the surprise first
    departures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "score": round(float(self.score), 6),
            "anomalous": bool(self.anomalous),
            "events": self.events,
            "top_templates": self.top_templates,
            "nearest_source_template": self.nearest_source_template,
            "reason": self.reason,
            "new_templates": self.new_templates,
            "surprise": None if self.surprise is None else round(float(self.surprise), 3),
            "departures": self.departures,
        }


class SessionScorer(Protocol):
    """A loaded detector as serving code sees it."""

    threshold: float
    rule: SessionRule  # how raw lines become sessions
    log_format: str  # loghub-style header format of raw lines ("<Content>" = whole line)
    line_filter: str  # regex a record line must match ("" = every line); others are continuation lines
    strip: str  # regex cut from each line's content before matching ("" = none)

    def event_id(self, content: str) -> int:
        """Template id of one log message; an unseen message gets a new id (embedded on the fly)."""
        ...

    def template(self, event_id: int) -> str: ...

    def score_sessions(self, sessions: list[list[int]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores (n,) and per-session attention weights over events."""
        ...

    def verdicts(self, keys: list[str], sessions: list[list[int]]) -> list[SessionVerdict]: ...
