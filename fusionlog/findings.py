"""What the finished detector says about the target's own logs, for the run's report.

Why: a user bringing up monitoring for a new service has no labels, so the run's metrics table is empty;
what they need first is which of *their* sessions the detector flags and why. The saved artifact scores
the adaptation pool through the served path (`fusionlog.served`), so each finding reads exactly as
`fusionlog detect` would print it for the same session: score, the departures that make its surprise, reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from fusionlog.config import SessionRule
from fusionlog.explain import largest_departure
from fusionlog.types import Session

#: Most anomalous sessions listed in the report.
TOP_FINDINGS = 10
#: Templates shown per listed session.
TOP_TEMPLATES = 3
#: Largest departures counted over the flagged sessions.
TOP_CAUSES = 5
#: Share of its own pool flagged past which the run says the detector would alert on most of what it reads.
MOST_FLAGGED = 0.5


def pool_findings(model_dir: Path, sessions: Sequence[Session], top: int = TOP_FINDINGS) -> dict:
    """Share of the target's sessions the artifact flags, and its `top` most anomalous ones."""
    from fusionlog.served import load_scorer

    scorer = load_scorer(model_dir)
    verdicts = scorer.verdicts([s.key for s in sessions], [list(s.event_ids) for s in sessions])
    flagged = sum(1 for v in verdicts if v.anomalous)
    worst = sorted(verdicts, key=lambda v: -v.score)[:top]
    causes = Counter(c for v in verdicts if v.anomalous and (c := largest_departure(v.departures)))
    share = flagged / max(len(verdicts), 1)
    return {
        "sessions": len(verdicts),
        "flagged": flagged,
        "flagged_share": round(share, 4),
        **({"note": flood_note(flagged, len(verdicts), scorer.rule)} if share > MOST_FLAGGED else {}),
        # what flags them: the commonest largest departures of the flagged sessions (candidates for a mute)
        "causes": [{"kind": kind, "template": template, "sessions": n}
                   for (kind, template), n in causes.most_common(TOP_CAUSES)],
        "top": [
            {"key": v.key, "score": round(float(v.score), 4), "anomalous": bool(v.anomalous), "events": v.events,
             "templates": [t["template"] for t in v.top_templates[:TOP_TEMPLATES]], "reason": v.reason,
             "surprise": None if v.surprise is None else round(float(v.surprise), 3),
             "departures": v.departures[:TOP_TEMPLATES]}
            for v in worst
        ],
    }


def flood_note(flagged: int, sessions: int, rule: SessionRule) -> str:
    """What to change when the detector flags most of the logs it learned from.

    Why: such a detector alerts on nearly everything it reads. Unless those logs were mostly failures, the pool
    had no ordinary side to measure surprise against: too few sessions, or sessions that never repeat (short
    windows over a chatty host's log, each a new mix). The fixes are the user's: more of the log, or a rule
    whose sessions repeat. Said once, where the user reads the run's result, not as a deep warning."""
    if rule.kind == "lines":
        unit = (f"each {rule.window}-line window is a new mix of messages; a key that groups a request's or "
                "an instance's lines (--key-regex) or longer windows (--window, --seconds) give sessions that repeat")
    elif rule.kind == "time":
        unit = (f"each {rule.seconds:g}-second window is a new mix of messages; a key that groups a request's or "
                "an instance's lines (--key-regex) gives sessions that repeat")
    else:
        unit = "its keys' sessions seldom repeat one another; check that --key-regex groups one request or job each"
    return (f"it flags {flagged} of the {sessions} sessions it learned from. Unless these logs were mostly "
            f"failures, too few of them look alike for any to read as ordinary: train on more of the log "
            f"(hours, not minutes), or {unit}.")


def findings_markdown(findings: dict) -> list[str]:
    """The report's section: one line of shares, what flags most of them, a table of the most anomalous."""
    lines = [
        "## What it flags in the target's own logs",
        "",
        f"{findings['flagged']} of {findings['sessions']} adaptation-pool sessions "
        f"({100 * findings['flagged_share']:.1f}%) are flagged, scored as `fusionlog detect` scores them.",
        "",
        *([f"**Most of them flagged:** {findings['note']}", ""] if findings.get("note") else []),
    ]
    causes = findings.get("causes") or []
    if causes:  # what an operator checks (and may mute) first
        lines += ["Flagged sessions by their largest departure (a routine one can be muted: `fusionlog mute`):", "",
                  *(f"- {c['sessions']} × {c['kind']} `{_cell(c['template']).replace('`', '')}`" for c in causes),
                  ""]
    lines += [
        f"The {len(findings['top'])} most anomalous:",
        "",
        "| session | score | flagged | events | surprise | why: its largest departures (units) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in findings["top"]:
        surprise = "–" if f.get("surprise") is None else f"{f['surprise']:.2f}"
        lines.append(f"| {_cell(f['key'])} | {f['score']:.3f} | {'yes' if f['anomalous'] else 'no'} "
                     f"| {f['events']} | {surprise} | {_why(f)} |")
    return [*lines, ""]


def _why(finding: dict) -> str:
    """`has 'X' (1.00); lacks 'Y' (0.93)`; a report written before departures lists its attended templates."""
    if not finding.get("departures"):
        return "; ".join(_cell(t) for t in finding["templates"])
    return "; ".join(f"{d['kind']} {_cell(d['template'], 70)} ({d['cost']:.2f})" for d in finding["departures"])


def _cell(text: str, width: int = 90) -> str:
    """A Markdown table cell: no pipes or newlines from log text, long templates cut."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"
