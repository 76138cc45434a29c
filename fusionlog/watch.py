"""What a running detector tells its operator unasked: that it reads nothing it can score (`FitWatch`), and that
it flags far more than in training, as after a release (`drift_hint`, `DriftWatch`). Shared by `detect` and the
HTTP service's ingest streams.
"""

from __future__ import annotations

import shlex
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fusionlog.metrics_file import RecentFlags


#: Sessions a run must score before `detect` compares its flagged share with the training pool's.
DRIFT_MIN_SESSIONS = 20


def drift_hint(flagged: int, sessions: int, pool_share: float | None, model: str) -> str | None:
    """What to say when most sessions are flagged, far more than in the training pool.

    Why: a release that rewords or drops messages makes nearly every session depart from the reference, and
    the flood reads like an outage. Whether it is one only the operator knows; the run can say which it looks
    like and what teaches the detector the new normal (`fusionlog baseline`), instead of leaving them to mute
    template after template.
    """
    if pool_share is None or sessions < DRIFT_MIN_SESSIONS:
        return None
    share = flagged / sessions
    if share <= 0.5 or share <= 2 * pool_share:
        return None
    return (f"{flagged} of {sessions} sessions flagged ({share:.0%}), where {pool_share:.0%} of the training pool "
            "was. If the service changed since training (a release), teach the detector the new normal from logs "
            f"you vouch for: `fusionlog baseline --model {shlex.quote(str(model))} GOOD.log --replace`; if it did not, "
            "this is an incident")


#: A live detect looks at its recent sessions (RecentFlags) every DRIFT_EVERY sessions and says a flood of flags
#: at most once per DRIFT_REPEAT_SECONDS of wall time.
DRIFT_EVERY, DRIFT_REPEAT_SECONDS = 50, 1800.0


class DriftWatch:
    """`drift_hint` for a live detect or a running service, over its most recent sessions.

    Why: a `detect --follow` never reaches its closing summary, nor does `serve`, and the release that floods them
    with flags happens while they run; said on every session it would be noise, so it is said again only after
    DRIFT_REPEAT_SECONDS. `who` starts the warning (`detect`, `serve`).
    """

    def __init__(self, pool_share: float | None, model: str, logger, clock=time.monotonic,
                 recent: RecentFlags | None = None, who: str = "detect") -> None:
        self.pool_share, self.model, self.logger, self.clock, self.who = pool_share, model, logger, clock, who
        from fusionlog.metrics_file import RecentFlags

        self.recent = recent if recent is not None else RecentFlags()
        self.seen = 0
        self._said = float("-inf")

    def record(self, anomalous: bool, counted: bool = False) -> None:
        """One verdict; `counted`: it is already in `recent` (shared with a --metrics-file)."""
        if not counted:
            self.recent.add(anomalous)
        self.seen += 1
        if self.seen % DRIFT_EVERY or not self.recent.full:
            return
        flagged, n = self.recent.counts()
        hint = drift_hint(flagged, n, self.pool_share, self.model)
        if hint and self.clock() - self._said >= DRIFT_REPEAT_SECONDS:
            self._said = self.clock()
            self.logger.warning("%s: over the last %d sessions: %s", self.who, n, hint)


def skip_reasons(stats: dict, keys=("unmatched_format", "no_session_key", "empty", "continuation")) -> list[str]:
    """['no session key 380', ...]: a user whose lines vanish needs to know which setting to check."""
    return [f"{k.replace('_', ' ')} {stats[k]}" for k in keys if stats.get(k)]


#: After this many lines with not one event, `detect` says so (a live stream would otherwise sit silent).
FIT_CHECK_LINES = 1_000


class FitWatch:
    """Warns once when the lines read so far gave the detector nothing to score.

    Why: a log of another system, or another format, is read without error: every line is counted as
    skipped and no verdict ever comes. The warning names what the artifact expects, so the user can tell a
    wrong `--model` from a changed log format.
    """

    def __init__(self, sessionizer, scorer, logger, where: str = "") -> None:
        """`where`: what the lines are, when not the run's only input (`stream 'pod-a': `)."""
        self.sessionizer, self.scorer, self.logger, self.where = sessionizer, scorer, logger, where
        self.warned = False
        self._checked = False

    def fed(self) -> None:
        """For lines fed to the sessionizer directly (an ingest stream): the one check, once FIT_CHECK_LINES are in."""
        if not self._checked and self.sessionizer.stats.read.lines >= FIT_CHECK_LINES:
            self._checked = True
            self._check()

    def lines(self, lines):
        """`lines` unchanged; one check once FIT_CHECK_LINES of them are in, then out of the way."""
        it = iter(lines)
        n = 0
        for line in it:
            yield line
            if line is not None:
                n += 1
                if n == FIT_CHECK_LINES:
                    self._check()
                    break
        yield from it

    def final(self) -> None:
        if not self.warned:
            self._check()

    def _check(self) -> None:
        st = self.sessionizer.stats.to_dict()
        if st["events"] or not st["lines"]:
            return
        self.warned = True
        sc = self.scorer
        rule = sc.rule
        how = f"key {rule.key_pattern!r}" if rule.kind == "key" else (
            f"{rule.window}-line windows" if rule.kind == "lines" else f"{rule.seconds:g}-second windows")
        reads = f"log format {sc.log_format!r}" + (f", line filter {sc.line_filter!r}" if getattr(
            sc, "line_filter", "") else "")
        self.logger.warning(
            "%snone of the %d lines read so far gave this detector an event (%s); is this a log of the system "
            "it was trained on? It reads lines with %s and cuts sessions by %s", self.where, st["lines"],
            ", ".join(skip_reasons(st)) or "all skipped", reads, how)
