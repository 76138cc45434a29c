"""The template teacher: the LLM judges each log *template* once; a session's verdict follows from them.

Why: asked about whole sessions, the small CPU models call nearly everything anomalous (Qwen2.5-Coder-
1.5B called all 64 HDFS pool sequences it labelled anomalous, all normal in truth). Asked about one
template at a time ("does this message report a problem?") the same model ranks OpenStack's templates
well: the session score "its most problem-like template" reaches ROC-AUC 0.97 on OpenStack's test
sessions. Templates are also few (OpenStack 92, HDFS 33) where sequences are many, so the whole
system costs a few dozen calls, each cached.

The model's absolute P(anomalous) is still biased (it calls 70-98% of templates anomalous, by system),
so it is read relative to the system's *everyday* behaviour, the assumption the threshold and the
common-sequence probe make too: anomalies are a minority, so a template found in at least half of the
system's sessions belongs to normal work. (Not "the commonest sequences": one OpenStack failure, a
network allocation abort, is among its six commonest sequences.) A sequence's verdict is

    P = sigmoid((max over its templates of logit p_t  -  max over everyday templates of logit p_t - m) / T)

so a sequence is called anomalous only when it holds a template the LLM finds more problem-like than
anything the system does every day. No label is used; a source system's everyday templates come from
its own sessions, so the source probe (`distill.rounds.probe_llm`) measures this exact reading.

The probe asks about labelled source *templates* (`labelled_templates`), not sequences: the answers reach
the small model per template (`have_weights`), so that is the ranking whose quality sets the trust. Measured
(`runs/s15`, 12 templates per class and source): Qwen2.5-Coder-0.5B ranks HDFS's templates at ROC-AUC 0.93,
Hadoop's 0.92, BGL's 0.75, OpenStack's 0.49; 12 of its *sequence* verdicts on the same systems gave 0.22-0.58,
since a sequence's verdict is the max over its templates and one routine-but-alarming word decides it.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from distill.labeller import add_counts
from fusionlog.config import register_config_type
from fusionlog.errors import ConfigError
from fusionlog.template_prior import labelled_templates  # noqa: F401  (the source probe's labels; re-exported)
from fusionlog.types import Session

logger = logging.getLogger(__name__)

TEACHERS: tuple[str, ...] = ("session", "template")
_EPS = 1e-4


@register_config_type
@dataclass(frozen=True)
class TemplateTeacherConfig:
    everyday_share: float = field(default=0.5, metadata={
        "help": "a template in at least this share of the system's sessions is everyday (normal) behaviour"})
    temperature: float = field(default=0.5, metadata={"help": "logit scale of a sequence's verdict"})
    margin: float = field(default=0.1, metadata={
        "help": "logits a template must stand above the everyday ones to make its sequence anomalous (ties: normal)"})

    def __post_init__(self) -> None:
        if not 0.0 < self.everyday_share <= 1.0:
            raise ConfigError(f"TemplateTeacherConfig.everyday_share={self.everyday_share}: must be in (0, 1]")
        if self.temperature <= 0 or self.margin < 0:
            raise ConfigError("TemplateTeacherConfig: temperature must be > 0 and margin >= 0")


def everyday_templates(sessions: Sequence[Session], share: float) -> set[int]:
    """Template ids found in at least `share` of the sessions; if none is, those of the commonest sequence
    (a system of short, varied sessions, such as BGL's windows, may have no template that common)."""
    if not sessions:
        return set()
    df: Counter[int] = Counter(int(e) for s in sessions for e in set(s.event_ids))
    out = {e for e, n in df.items() if n >= share * len(sessions)}
    if out:
        return out
    common = Counter(tuple(s.event_ids) for s in sessions).most_common(1)[0][0]
    return {int(e) for e in common}


def logit(p: float) -> float:
    p = min(max(float(p), _EPS), 1.0 - _EPS)
    return math.log(p / (1.0 - p))


def sequence_prob(event_ids: Sequence[int], template_logits: dict[int, float], shift: float,
                  temperature: float) -> float | None:
    """The sequence's P(anomalous) from its templates' verdicts; None when none of them was answered."""
    known = [template_logits[e] for e in set(event_ids) if e in template_logits]
    if not known:
        return None
    z = (max(known) - shift) / temperature
    return float(1.0 / (1.0 + math.exp(-min(max(z, -50.0), 50.0))))


class TemplateTeacher:
    """One system's template verdicts; `probs(sessions)` asks only templates not asked before.

    `labeller` is a `distill.labeller.Labeller` built on the `label_template` prompt: each template is
    sent as a one-event session, so the cache, retries, abstentions and progress bar are the labeller's.
    `reference` are the system's sessions (labels unused) that define its everyday behaviour.
    """

    def __init__(self, labeller, templates: Sequence[str], system: str, reference: Sequence[Session],
                 config: TemplateTeacherConfig | None = None) -> None:
        self.labeller = labeller
        self.templates = list(templates)
        self.system = system
        self.config = config or TemplateTeacherConfig()
        self.everyday = everyday_templates(reference, self.config.everyday_share)
        self.logits: dict[int, float] = {}
        self.asked: set[int] = set()

    def _ask(self, ids: set[int], stats: dict) -> None:
        todo = sorted(e for e in ids if e not in self.asked and 0 <= e < len(self.templates))
        if not todo:
            return
        one = [Session(self.system, f"template:{e}", [e]) for e in todo]
        run = self.labeller.label(one, self.templates, self.system)
        for (e,), p in run.sequence_probs(one).items():
            self.logits[e] = logit(p)
        self.asked.update(todo)
        add_counts(stats, run.stats.to_dict())

    @property
    def shift(self) -> float:
        """The most problem-like everyday template's logit plus the margin (P 0.5 when none was answered)."""
        known = [self.logits[e] for e in self.everyday if e in self.logits]
        return (max(known) if known else 0.0) + self.config.margin

    def have_weights(self, base: np.ndarray, trust: float) -> np.ndarray:
        """Per-template weights of the set surprise: `base` (the detector's template prior, 1 = plain) plus,
        for every template this teacher has answered, trust * (2 P_t - 1), clipped to [0, 2]; P_t is the
        verdict a one-template sequence gets (the template read against the everyday ones, as `probs` reads
        sequences).

        Why this shape: a template the LLM finds no more problem-like than everyday work (P_t near 0) costs
        less than its rarity, one it finds a problem (P_t near 1) more, an undecided one (0.5) what the base
        says, so the unit of surprise and its 1-unit cut are kept. `trust` (the source probe's 2 AUC - 1)
        shrinks the LLM's term: an LLM no better than chance changes nothing. Adding to the prior's weight
        (`fusionlog.template_prior`, itself 1 + its trust (2 P - 1)) sums two measured pieces of evidence
        about the same words; the base is the prior, never the weights of an earlier round, so a round
        does not compound them. Templates not answered here keep `base`.
        """
        trust = float(np.clip(trust, 0.0, 1.0))
        weights = np.array(base, dtype=np.float64, copy=True)
        shift = self.shift
        for e in self.logits:
            if 0 <= e < len(weights):
                p = sequence_prob([e], self.logits, shift, self.config.temperature)
                weights[e] = float(np.clip(weights[e] + trust * (2.0 * float(p) - 1.0), 0.0, 2.0))
        return weights

    def probs(self, sessions: Sequence[Session]) -> tuple[dict[tuple, float], dict]:
        """({event sequence: P(anomalous)}, labeller stats summed); unanswerable sequences are left out."""
        stats: dict = {}
        self._ask(self.everyday | {int(e) for s in sessions for e in s.event_ids}, stats)
        if self.everyday and not any(e in self.logits for e in self.everyday):
            logger.warning("template teacher: the LLM answered none of %s's %d everyday templates; reading its "
                           "verdicts against P 0.5", self.system, len(self.everyday))
        shift = self.shift
        got: dict[tuple, float] = {}
        for s in sessions:
            p = sequence_prob(s.event_ids, self.logits, shift, self.config.temperature)
            if p is not None:
                got[tuple(s.event_ids)] = p
        stats["labelled_sequences"] = len(got)
        stats["everyday_templates"] = len(self.everyday)
        stats["everyday_p"] = round(1.0 / (1.0 + math.exp(-(shift - self.config.margin))), 4)
        return got, stats

