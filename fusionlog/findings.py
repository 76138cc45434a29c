"""What the finished detector says about the target's own logs, for the run's report.

Why: a user bringing up monitoring for a new service has no labels, so the run's metrics table is empty;
what they need first is which of *their* sessions the detector flags and why. The saved artifact scores
the adaptation pool through the served path (`fusionlog.served`), so each finding reads exactly as
`fusionlog detect` would print it for the same session: score, the templates it attends to most, reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fusionlog.types import Session

#: Most anomalous sessions listed in the report.
TOP_FINDINGS = 10
#: Templates shown per listed session.
TOP_TEMPLATES = 3


def pool_findings(model_dir: Path, sessions: Sequence[Session], top: int = TOP_FINDINGS) -> dict:
    """Share of the target's sessions the artifact flags, and its `top` most anomalous ones."""
    from fusionlog.served import load_scorer

    scorer = load_scorer(model_dir)
    verdicts = scorer.verdicts([s.key for s in sessions], [list(s.event_ids) for s in sessions])
    flagged = sum(1 for v in verdicts if v.anomalous)
    worst = sorted(verdicts, key=lambda v: -v.score)[:top]
    return {
        "sessions": len(verdicts),
        "flagged": flagged,
        "flagged_share": round(flagged / max(len(verdicts), 1), 4),
        "top": [
            {"key": v.key, "score": round(float(v.score), 4), "anomalous": bool(v.anomalous), "events": v.events,
             "templates": [t["template"] for t in v.top_templates[:TOP_TEMPLATES]], "reason": v.reason}
            for v in worst
        ],
    }


def findings_markdown(findings: dict) -> list[str]:
    """The report's section: one line of shares, then a table of the most anomalous sessions."""
    lines = [
        "## What it flags in the target's own logs",
        "",
        f"{findings['flagged']} of {findings['sessions']} adaptation-pool sessions "
        f"({100 * findings['flagged_share']:.1f}%) are flagged, scored as `fusionlog detect` scores them. "
        f"The {len(findings['top'])} most anomalous:",
        "",
        "| session | score | flagged | events | templates it attends to most |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in findings["top"]:
        templates = "; ".join(_cell(t) for t in f["templates"])
        lines.append(f"| {_cell(f['key'])} | {f['score']:.3f} | {'yes' if f['anomalous'] else 'no'} "
                     f"| {f['events']} | {templates} |")
    return [*lines, ""]


def _cell(text: str, width: int = 90) -> str:
    """A Markdown table cell: no pipes or newlines from log text, long templates cut."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"
