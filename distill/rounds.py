"""Multi-round collaborative distillation (FusionLog's core loop).

Round 0 is the general-path model. Each later round:
  1. score the target's unlabelled pool with the small model (P = sigmoid(score - threshold));
  2. route the pool: *proprietary* sessions the LLM has not labelled yet go to the LLM, most
     uncertain first, within the round's call budget;
  3. *collaboration*: where the small model is confident and a previous LLM verdict disagrees, the
     session goes back to the LLM with the small model's view in the prompt;
  3b. with the template teacher (`--teacher template`), the LLM's verdict on each target template
     reweighs what having that template costs in the set surprise, the wide path's input
     (`TemplateTeacher.have_weights`: the template prior's weight + trust (2P - 1), see
     `fusionlog.template_prior`): rarity cannot tell a rare routine message
     from a rare error, the LLM reading its words can. The weights are saved with the detector;
  4. fine-tune the small model on source labels + confident general pseudo-labels (its own) + LLM
     soft labels weighted by the LLM's confidence (`distill.finetune`);
  5. re-threshold without labels, checkpoint, and stop when fewer than `stop_change` of the pool's
     predictions changed, or after `rounds` rounds;
  6. optional (`--llm-lora`, `RoundContext.llm_adapter`): train a LoRA adapter for the LLM on the
     sequences the fine-tuned small model is confident about and the LLM labelled the same way,
     save it in the round's checkpoint (`round_N/llm_adapter/`), and label with it from the next
     round on. Its weights' hash is part of the LLM's identity, hence of every cache key.

Every round ends with a full checkpoint (detector, LLM adapter, `state.json` written last), so
`--resume` starts after the last complete round with that round's adapter, and LLM calls go through
the labeller's SQLite cache, so a rerun never pays twice for a call.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from distill.config import RoundLoraConfig
from distill.finetune import FinetuneConfig, finetune
from distill.template_teacher import TEACHERS, TemplateTeacherConfig
from fusionlog.config import register_config_type
from fusionlog.errors import ArtifactError, ConfigError
from fusionlog.io import atomic_write_json, replace_dir
from fusionlog.types import Session

logger = logging.getLogger(__name__)

STATE_NAME = "state.json"
ROUNDS_DIR = "rounds"
LLM_ADAPTER_DIR = "llm_adapter"


@register_config_type
@dataclass(frozen=True)
class DistillConfig:
    rounds: int = field(default=3, metadata={"help": "distillation rounds after round 0 (the general path)"})
    calls_per_round: int = field(default=16, metadata={
        "help": "distinct sequences sent to the LLM per round (session teacher; a template teacher labels all)"})
    max_fraction: float | None = field(
        default=None, metadata={"help": "cap on LLM-labelled sessions as a share of the pool (None = no cap)"})
    stop_change: float = field(default=0.01, metadata={"help": "stop when fewer than this share of labels change"})
    confident: float = field(default=0.9, metadata={"help": "small-model probability counted as confident"})
    general_weight: float = field(default=0.5, metadata={"help": "weight of confident general pseudo-labels"})
    recheck: bool = field(default=True, metadata={"help": "send strong disagreements back to the LLM"})
    max_rechecks: int = field(default=8, metadata={"help": "rechecks per round"})
    probe_per_class: int = field(default=6, metadata={
        "help": "labelled source sequences per class the LLM answers before round 1 (its trust); 0 = off"})
    probe_templates: int = field(default=12, metadata={
        "help": "template teacher: labelled templates per class *and source* it answers before round 1 (its trust; "
                "replaces the sequence probe, distill.template_teacher.labelled_templates); 0 = off"})
    probe_common: int = field(default=6, metadata={
        "help": "the target's commonest distinct pool sequences the LLM is asked about before round 1; the share "
                "it calls anomalous, c, scales its trust by (1 - c); 0 = off"})
    deep_bound: float | None = field(default=None, metadata={
        "help": "the deep path's bound in the rounds, times the LLM's trust (never below the general path's); "
                "None: 1 with the session teacher, 0 (keep the general path's) with the template teacher"})
    teacher: str = field(default="session", metadata={
        "help": "how the LLM labels: 'session' (one call per sequence) or 'template' (one call per template, "
                "read against the system's everyday templates; distill.template_teacher)"})
    template: TemplateTeacherConfig = field(default_factory=TemplateTeacherConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lora: RoundLoraConfig = field(default_factory=RoundLoraConfig)  # used only with --llm-lora

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.calls_per_round < 0 or self.max_rechecks < 0:
            raise ConfigError("DistillConfig: rounds, calls_per_round and max_rechecks must be >= 0")
        if not 0.5 < self.confident < 1.0:
            raise ConfigError(f"DistillConfig.confident={self.confident}: must be in (0.5, 1)")
        if self.max_fraction is not None and not 0.0 < self.max_fraction <= 1.0:
            raise ConfigError(f"DistillConfig.max_fraction={self.max_fraction}: must be in (0, 1]")
        if self.probe_per_class < 0 or self.probe_common < 0 or self.probe_templates < 0:
            raise ConfigError("DistillConfig.probe_per_class, probe_templates and probe_common must be >= 0")
        if not 0.0 <= self.stop_change < 1.0:
            raise ConfigError(f"DistillConfig.stop_change={self.stop_change}: must be in [0, 1)")
        if self.deep_bound is not None and self.deep_bound < 0:
            raise ConfigError(f"DistillConfig.deep_bound={self.deep_bound}: must be >= 0")
        if self.teacher not in TEACHERS:
            raise ConfigError(f"DistillConfig.teacher={self.teacher!r}: one of {list(TEACHERS)}")

    @property
    def round_deep_bound(self) -> float:
        """The deep path's bound in the rounds before the trust factor.

        Why 0 for the template teacher: its verdicts already reach the small model per template, through the
        surprise weights; its sequence verdicts are only the max over those same answers, and teaching the
        deep path that coarser copy drifted (HDFS, 1.5B teacher, trust 0.58: test F1 0.939 after rounds 1-2,
        0.836 after round 3), where the weights alone hold 0.924 round after round.
        """
        if self.deep_bound is not None:
            return self.deep_bound
        return 0.0 if self.teacher == "template" else 1.0

    @property
    def probe_size(self) -> int:
        """What the source probe asks per class: sequences (session teacher), or templates per source (template
        teacher: its answers are used per template, as surprise weights, so its trust is measured per template)."""
        return self.probe_templates if self.teacher == "template" else self.probe_per_class

    @property
    def probe_unit(self) -> str:
        return "templates" if self.teacher == "template" else "sequences"

    @property
    def asks_sessions(self) -> bool:
        """Session verdicts can change with the small model's view (recheck) and can be probed on the
        target's commonest sequences; template verdicts already assume those are normal."""
        return self.teacher == "session"


@dataclass
class LLMVerdict:
    prob: float
    label: int
    rechecked: bool = False


@dataclass
class RoundRecord:
    round: int
    llm_calls: int = 0  # backend calls paid this round (retries included, cache hits excluded)
    llm_cache_hits: int = 0
    llm_tokens: int = 0
    llm_labelled_sequences: int = 0
    rechecked_sequences: int = 0
    abstained: int = 0
    general_sessions: int = 0
    proprietary_sessions: int = 0
    pseudo_general: int = 0
    labels_changed: float | None = None  # share of pool predictions that changed vs the previous round
    pool_flagged: float = 0.0
    threshold: float = 0.0
    finetune: dict = field(default_factory=dict)
    test: dict | None = None  # metrics on the held-out test part (labels used only here)
    llm_lora: dict | None = None  # --llm-lora: agreed labels, training summary, adapter path (None: off)
    llm_probe: dict | None = None  # round 0: the LLM on labelled source sequences (AUC, trust); None: no probe
    deep_bound: float | None = None  # the model's deep-path bound after this round (widened by trust in round 1)
    reweighted_templates: int = 0  # target templates whose surprise weight the LLM's verdict moved off the prior's
    seconds: float = 0.0


LabelFn = Callable[[list[Session], np.ndarray, bool], tuple[dict[tuple, float], dict]]
"""(sessions, small-model probabilities, recheck?) -> ({event sequence: P(anomalous)}, stats)."""


ProbeFn = Callable[[int], tuple[list[float], list[int], dict]]
"""(items per class) -> (the LLM's P(anomalous) on labelled source items, their labels, stats); items are
sequences for the session teacher, templates for the template teacher (`DistillConfig.probe_unit`)."""


HaveWeightsFn = Callable[[float, np.ndarray], "np.ndarray | None"]
"""(trust, the weights so far) -> per-template surprise weights with the LLM's verdicts, or None (unchanged)."""


@dataclass(frozen=True)
class AgreedLabel:
    """One pool sequence both models label the same way, the (fine-tuned) small model confidently."""

    session: Session  # a representative pool session (labels hidden)
    label: int
    llm_prob: float
    small_prob: float  # mean over the pool sessions sharing the sequence


class LLMAdapterHooks(Protocol):
    """How the rounds adapt the LLM (`--llm-lora`); `fusionlog.pipeline.LazyLabeller` implements it."""

    def train(self, agreed: list[AgreedLabel], out_dir: Path) -> dict:
        """Train an adapter on `agreed` (+ whatever balancing it adds), write it to `out_dir`, return a summary."""
        ...

    def use(self, adapter: Path | None) -> None:
        """Label with this adapter from now on (None: the base model / the user's --llm-adapter)."""
        ...


@dataclass
class RoundContext:
    """Everything the loop needs; built by `fusionlog.pipeline` (or a test)."""

    detector: object  # fusionlog.detector.Detector, fitted (round 0)
    sources: Sequence[object]  # fusionlog.detector.SystemSessions, labelled
    pool: list[Session]  # target adaptation pool, labels hidden
    general_mask: np.ndarray  # (len(pool),) bool, from the router
    label_fn: LabelFn
    rethreshold: Callable[[object], None]  # recompute detector.threshold_ without labels
    evaluate: Callable[[object], dict | None] = lambda det: None  # test metrics, or None when unlabelled
    save_detector: Callable[[object, Path], None] = lambda det, path: det.save_pretrained(path)
    load_detector: Callable[[Path], object] | None = None
    llm_adapter: LLMAdapterHooks | None = None  # set: train + switch the LLM's LoRA adapter every round
    probe_fn: ProbeFn | None = None  # set: measure the LLM on labelled source sequences before trusting it
    have_weights: HaveWeightsFn | None = None  # set (template teacher): the LLM's verdicts reweigh the surprise


def small_probs(detector, sessions: Sequence[Session]) -> np.ndarray:
    """The small model's P(anomalous), centred on its threshold (0.5 = on the threshold)."""
    scores = detector.decision_function(sessions)
    return 1.0 / (1.0 + np.exp(-(scores - detector.threshold_)))


def run_rounds(ctx: RoundContext, config: DistillConfig, out_dir: Path, resume: bool = False,
               on_round: Callable[[RoundRecord], None] | None = None) -> tuple[object, list[RoundRecord]]:
    """Run (or resume) the rounds; returns the final detector and one record per round (round 0 first)."""
    out_dir = Path(out_dir)
    rounds_dir = out_dir / ROUNDS_DIR
    seqs = [tuple(s.event_ids) for s in ctx.pool]
    llm: dict[tuple, LLMVerdict] = {}
    history: list[RoundRecord] = []
    detector = ctx.detector
    start = 0
    adapter: str | None = None  # the LLM adapter in use, relative to out_dir
    if resume:
        found = last_complete_round(rounds_dir)
        if found is not None:
            r, state = found
            if ctx.load_detector is None:
                raise ArtifactError("resume needs a detector loader")
            detector = ctx.load_detector(rounds_dir / f"round_{r}")
            llm = {tuple(json.loads(k)): LLMVerdict(**v) for k, v in state["llm"].items()}
            history = [RoundRecord(**h) for h in state["history"]]
            adapter = state.get("llm_adapter")
            if ctx.llm_adapter is not None and adapter is not None:
                if not (out_dir / adapter).is_dir():
                    raise ArtifactError(f"resume: round {r} names LLM adapter {out_dir / adapter}, which is missing")
                ctx.llm_adapter.use(out_dir / adapter)
            start = r + 1
            logger.info("resuming after round %d (%d LLM verdicts kept)", r, len(llm))
    if start == 0:
        t0 = time.perf_counter()
        rec = RoundRecord(0, general_sessions=int(ctx.general_mask.sum()),
                          proprietary_sessions=int((~ctx.general_mask).sum()))
        rec.threshold = float(detector.threshold_)
        rec.deep_bound = float(detector.model_.config.deep_bound)
        preds = small_probs(detector, ctx.pool) > 0.5
        rec.pool_flagged = round(float(preds.mean()), 4) if len(preds) else 0.0
        rec.test = ctx.evaluate(detector)
        if ctx.probe_fn is not None and config.probe_size > 0 and config.rounds > 0:
            rec.llm_probe = probe_llm(ctx.probe_fn, config.probe_size, rec, config.probe_unit)
        if (config.asks_sessions and config.probe_common > 0 and config.rounds > 0
                and (rec.llm_probe or {}).get("trust", 1.0) > 0):
            rec.llm_probe = probe_common(ctx, detector, seqs, llm, config.probe_common, rec)
        rec.seconds = round(time.perf_counter() - t0, 2)
        history.append(rec)
        _checkpoint(ctx, detector, rounds_dir, 0, llm, history, adapter)
        if on_round:
            on_round(rec)
        start = 1
    trust = float((history[0].llm_probe or {}).get("trust", 1.0))
    if trust <= 0.0:
        probe = history[0].llm_probe or {}
        why = ("it calls the target's everyday (commonest) behaviour anomalous"
               if probe.get("common_called_anomalous", 0) >= 1 and (probe.get("auc") or 1) > 0.5
               else "it labels source sessions no better than chance")
        logger.warning("LLM trust 0: %s (%s); its labels would be noise, so no distillation round runs and the "
                       "general-path model is kept", why, probe)
        return detector, history
    if start == 1 and detector.model_.widen_deep_path(trust * config.round_deep_bound):
        logger.info("deep path bound widened to %.3g (trust %.2f x %.3g): the LLM's labels may now move it",
                    detector.model_.config.deep_bound, trust, config.round_deep_bound)
    prev_pred = small_probs(detector, ctx.pool) > 0.5
    budget_left = _overall_budget(config, len(ctx.pool), llm)
    for r in range(start, config.rounds + 1):
        t0 = time.perf_counter()
        rec = RoundRecord(r, general_sessions=int(ctx.general_mask.sum()),
                          proprietary_sessions=int((~ctx.general_mask).sum()))
        p_small = small_probs(detector, ctx.pool)
        # 2. new LLM labels for proprietary sessions not labelled yet
        todo = [i for i in np.flatnonzero(~ctx.general_mask) if seqs[i] not in llm]
        # a template teacher pays per template, so it labels every sequence the budget allows at once
        n_calls = min(config.calls_per_round, budget_left) if config.asks_sessions else budget_left
        if todo and n_calls > 0:
            chosen = _most_uncertain(todo, seqs, p_small, n_calls)
            got, stats = ctx.label_fn([ctx.pool[i] for i in chosen], p_small[chosen], False)
            for seq, prob in got.items():
                llm[seq] = LLMVerdict(float(prob), int(prob >= 0.5))
            _add_stats(rec, stats)
            rec.llm_labelled_sequences = len(got)
            budget_left -= len({seqs[i] for i in chosen})
        # 3. collaboration: confident small model vs disagreeing LLM verdict -> ask again with its view
        if config.recheck and config.asks_sessions and llm:
            disagree = _disagreements(seqs, p_small, llm, config.confident, config.max_rechecks)
            if disagree:
                got, stats = ctx.label_fn([ctx.pool[i] for i in disagree], p_small[disagree], True)
                for seq, prob in got.items():
                    llm[seq] = LLMVerdict(float(prob), int(prob >= 0.5), rechecked=True)
                _add_stats(rec, stats)
                rec.rechecked_sequences = len(got)
        # 3b. what the LLM says each template means reweighs the set surprise (the wide path's input)
        if ctx.have_weights is not None:
            base = detector.prior_weights()
            weights = ctx.have_weights(trust, base)
            if weights is not None:
                detector.set_have_weights(weights)
                rec.reweighted_templates = int(np.count_nonzero(np.abs(weights - base) > 1e-6))
        # 4. teacher signal per pool session
        teacher = np.full(len(ctx.pool), np.nan, dtype=np.float32)
        weight = np.zeros(len(ctx.pool), dtype=np.float32)
        conf_general = ctx.general_mask & ((p_small >= config.confident) | (p_small <= 1 - config.confident))
        teacher[conf_general] = (p_small[conf_general] >= 0.5).astype(np.float32)
        weight[conf_general] = config.general_weight
        rec.pseudo_general = int(conf_general.sum())
        trusted = np.ones(len(ctx.pool), dtype=np.float32)  # 1 for the small model's own pseudo-labels
        for i, seq in enumerate(seqs):
            v = llm.get(seq)
            if v is not None:
                teacher[i] = v.prob
                weight[i] = max(abs(2 * v.prob - 1), 0.05)
                trusted[i] = trust
        rec.finetune = finetune(detector, ctx.sources, ctx.pool, teacher, weight * trusted,
                                _trusted_finetune(config.finetune, weight, trusted))
        ctx.rethreshold(detector)
        # 5. bookkeeping, checkpoint, stop rule
        p_end = small_probs(detector, ctx.pool)
        pred = p_end > 0.5
        rec.labels_changed = round(float((pred != prev_pred).mean()), 4) if len(pred) else 0.0
        rec.pool_flagged = round(float(pred.mean()), 4) if len(pred) else 0.0
        rec.threshold = float(detector.threshold_)
        rec.deep_bound = float(detector.model_.config.deep_bound)
        rec.test = ctx.evaluate(detector)
        # 6. --llm-lora: the next round's LLM learns from this round's agreements
        staged = None
        if ctx.llm_adapter is not None:
            rec.llm_lora, staged = _adapt_llm(ctx.llm_adapter, config.lora, ctx.pool, seqs, p_end, llm,
                                              rounds_dir / f".round_{r}.{LLM_ADAPTER_DIR}.tmp", adapter)
            if staged is not None:
                adapter = rec.llm_lora["adapter"] = f"{ROUNDS_DIR}/round_{r}/{LLM_ADAPTER_DIR}"
        rec.seconds = round(time.perf_counter() - t0, 2)
        history.append(rec)
        _checkpoint(ctx, detector, rounds_dir, r, llm, history, adapter, staged)
        if staged is not None:
            ctx.llm_adapter.use(out_dir / adapter)  # type: ignore[union-attr, operator]
        if on_round:
            on_round(rec)
        prev_pred = pred
        if rec.labels_changed < config.stop_change and r > 1:
            logger.info("round %d: %.2f%% of labels changed < %.2f%%: stop", r, 100 * rec.labels_changed,
                        100 * config.stop_change)
            break
    return detector, history


def _trusted_finetune(ft: FinetuneConfig, weight: np.ndarray, trusted: np.ndarray) -> FinetuneConfig:
    """Scale the fine-tune's step size by the mean trust of its teacher signal.

    Why: the teacher's information is what justifies moving the model away from round 0 at all, so the
    move shrinks with the trust. Why not the weights alone: `finetune` normalises teacher weights (they
    set sampling odds and a weighted mean), so scaling every LLM weight by the trust would cancel out;
    and shrinking only the distillation term leaves the source term free to pull the model away from
    its domain-aligned round-0 state (measured on hdfs: F1 0.156 -> 0.037 at trust 0.22).
    """
    total = float(weight.sum())
    if total <= 0:
        return ft
    return replace(ft, lr=ft.lr * float((weight * trusted).sum()) / total)


def probe_llm(probe_fn: ProbeFn, per_class: int, rec: RoundRecord, unit: str = "sequences") -> dict:
    """Ask the LLM about labelled *source* sequences (or templates) and turn its ranking into a trust in [0, 1].

    Why: a teacher that cannot tell the classes apart on systems whose labels we hold (a small model
    that calls everything anomalous, a server answering garbage) only adds noise to the distillation.
    trust = 2 * ROC-AUC - 1, clipped: 0 at chance or worse (then no round runs), 1 for a perfect ranking;
    LLM soft labels are weighted by it. The calls are paid (and cached) like any other.
    """
    probs, labels, stats = probe_fn(per_class)
    _add_stats(rec, stats)
    y = np.asarray(labels, dtype=np.int64)
    auc = ranking_auc(np.asarray(probs, dtype=np.float64), y)
    if auc is None:
        return {"probes": len(y), "anomalous": int(y.sum()), "auc": None, "trust": 1.0, "unit": unit,
                "note": "too few answered probes of each class: LLM labels used unweighted"}
    trust = float(np.clip(2.0 * auc - 1.0, 0.0, 1.0))
    logger.info("LLM probe on %d labelled source %s: ROC-AUC %.3f -> trust %.2f", len(y), unit, auc, trust)
    return {"probes": len(y), "anomalous": int(y.sum()), "auc": round(auc, 4), "trust": round(trust, 4), "unit": unit}


def probe_common(ctx: RoundContext, detector, seqs: list[tuple], llm: dict, n: int, rec: RoundRecord) -> dict:
    """Ask the LLM about the target's `n` commonest distinct pool sequences; its trust shrinks by the share
    it calls anomalous.

    Why: the source probe measures the LLM on *other* systems. This one measures it on the target itself,
    without a label, under the assumption every zero-label detector here makes (the threshold makes it
    too): anomalies are a minority, so the target's everyday behaviour is normal, and a teacher that
    calls it anomalous has nothing to teach about the rare behaviour. Measured: Qwen2.5-Coder-1.5B probed
    at ROC-AUC 0.81 on source sequences, then called all 64 HDFS pool sequences it labelled anomalous (all
    normal), and the rounds cut test F1 from 0.84 to 0.74. A system whose commonest behaviour *is*
    anomalous (hadoop: 83% of applications) lies outside the assumption. The answers are real labels of
    pool sequences: they join the LLM's verdicts (and the budget) like any other.
    """
    probe = dict(rec.llm_probe or {"trust": 1.0})
    first: dict[tuple, int] = {}
    counts: dict[tuple, int] = {}
    for i, seq in enumerate(seqs):
        first.setdefault(seq, i)
        counts[seq] = counts.get(seq, 0) + 1
    common = sorted(counts, key=lambda s: (-counts[s], first[s]))[:n]
    asked = [ctx.pool[first[s]] for s in common]
    got, stats = ctx.label_fn(asked, small_probs(detector, asked), False)
    _add_stats(rec, stats)
    for seq, prob in got.items():
        llm[seq] = LLMVerdict(float(prob), int(prob >= 0.5))
    answered = [got[s] for s in common if s in got]
    if not answered:
        probe["common_note"] = "the LLM answered none of the commonest pool sequences: trust unchanged"
        return probe
    called = float(np.mean([p >= 0.5 for p in answered]))
    trust = float(probe.get("trust", 1.0)) * (1.0 - called)
    logger.info("LLM on the target's %d commonest pool sequences: %.0f%% called anomalous -> trust %.2f",
                len(answered), 100 * called, trust)
    probe.update(common=len(answered), common_called_anomalous=round(called, 4), trust=round(trust, 4))
    return probe


def ranking_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC-AUC by pairwise comparison (ties count half); None without both classes."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def agreed_labels(pool: Sequence[Session], seqs: list[tuple], p_small: np.ndarray, llm: dict[tuple, LLMVerdict],
                  config: RoundLoraConfig) -> list[AgreedLabel]:
    """Distinct LLM-labelled sequences the small model labels the same way with P (or 1-P) >= confident.

    Most confident first, at most `max_agreed`; ties keep pool order, so the list is deterministic.
    """
    members: dict[tuple, list[int]] = {}
    for i, seq in enumerate(seqs):
        if seq in llm:
            members.setdefault(seq, []).append(i)
    out: list[tuple[float, int, AgreedLabel]] = []
    for seq, idx in members.items():
        v = llm[seq]
        p = float(np.mean(p_small[idx]))
        if int(p >= 0.5) == v.label and max(p, 1.0 - p) >= config.confident:
            out.append((-max(p, 1.0 - p), idx[0], AgreedLabel(pool[idx[0]], v.label, v.prob, round(p, 4))))
    out.sort(key=lambda t: (t[0], t[1]))
    return [a for _, _, a in out[:config.max_agreed]]


def _adapt_llm(hooks: LLMAdapterHooks, config: RoundLoraConfig, pool: Sequence[Session], seqs: list[tuple],
               p_small: np.ndarray, llm: dict[tuple, LLMVerdict], staging: Path,
               current: str | None) -> tuple[dict, Path | None]:
    """Train the next round's adapter into `staging` (moved into the checkpoint later), or say why not."""
    agreed = agreed_labels(pool, seqs, p_small, llm, config)
    record: dict = {"labelled_with": current, "agreed": len(agreed),
                    "agreed_anomalous": sum(a.label for a in agreed), "adapter": current, "skipped": None}
    if len(agreed) < config.min_agreed:
        record["skipped"] = f"{len(agreed)} agreed sequence(s) < min_agreed={config.min_agreed}; adapter kept"
        logger.info("llm-lora: %s", record["skipped"])
        return record, None
    if staging.exists():
        shutil.rmtree(staging)
    record.update(hooks.train(agreed, staging))
    return record, staging


def _overall_budget(config: DistillConfig, n_pool: int, llm: dict) -> int:
    if config.max_fraction is None:
        return 10**9
    return max(int(np.ceil(config.max_fraction * n_pool)) - len(llm), 0)


def _most_uncertain(todo: list[int], seqs: list[tuple], p_small: np.ndarray, n: int) -> list[int]:
    """One representative per distinct sequence, closest to 0.5 first, ties by how many sessions share it."""
    reps: dict[tuple, list[int]] = {}
    for i in todo:
        reps.setdefault(seqs[i], []).append(i)
    order = sorted(reps.items(), key=lambda kv: (abs(float(p_small[kv[1]].mean()) - 0.5), -len(kv[1])))
    return [idx[0] for _, idx in order[:n]]


def _disagreements(seqs, p_small, llm, confident, limit) -> list[int]:
    seen: set[tuple] = set()
    out: list[tuple[float, int]] = []
    for i, seq in enumerate(seqs):
        v = llm.get(seq)
        if v is None or v.rechecked or seq in seen:
            continue
        small_label = int(p_small[i] >= 0.5)
        sure = p_small[i] >= confident or p_small[i] <= 1 - confident
        if sure and small_label != v.label:
            seen.add(seq)
            out.append((abs(float(p_small[i]) - 0.5), i))
    out.sort(reverse=True)
    return [i for _, i in out[:limit]]


def _add_stats(rec: RoundRecord, stats: dict) -> None:
    rec.llm_calls += int(stats.get("calls", 0))
    rec.llm_cache_hits += int(stats.get("cache_hits", 0))
    rec.llm_tokens += int(stats.get("prompt_tokens", 0)) + int(stats.get("completion_tokens", 0))
    rec.abstained += int(stats.get("abstained_sequences", 0))


def _checkpoint(ctx: RoundContext, detector, rounds_dir: Path, r: int, llm: dict, history: list[RoundRecord],
                adapter: str | None = None, staged_adapter: Path | None = None) -> None:
    """Detector (+ this round's LLM adapter) + state.json into a temp folder, renamed into place: a kill
    leaves the last round whole. `adapter` (relative to the run folder) is the one `--resume` reloads."""
    rounds_dir.mkdir(parents=True, exist_ok=True)
    tmp = rounds_dir / f".round_{r}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    ctx.save_detector(detector, tmp)
    if staged_adapter is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged_adapter), str(tmp / LLM_ADAPTER_DIR))
    state = {
        "round": r,
        "llm": {json.dumps(list(k)): asdict(v) for k, v in llm.items()},
        "history": [asdict(h) for h in history],
        "llm_adapter": adapter,
    }
    atomic_write_json(tmp / STATE_NAME, state)
    replace_dir(tmp, rounds_dir / f"round_{r}")


def last_complete_round(rounds_dir: Path) -> tuple[int, dict] | None:
    best: tuple[int, dict] | None = None
    if not rounds_dir.is_dir():
        return None
    for d in rounds_dir.glob("round_*"):
        state_path = d / STATE_NAME
        if not state_path.is_file():
            continue
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            r = int(state["round"])
        except (ValueError, KeyError):
            continue
        if best is None or r > best[0]:
            best = (r, state)
    return best
