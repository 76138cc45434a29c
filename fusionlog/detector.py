"""`Detector`: the general path's estimator for one target system (pyod/sklearn contract).

``fit(sources, target)`` trains a `SessionModel` on labelled source systems and the target's
*unlabelled* adaptation pool, then sets ``threshold_`` with a label-free rule;
``decision_function(sessions)`` returns one score per session (a logit: higher = more anomalous);
``predict`` is ``decision_function > threshold_``. Learned state ends in ``_``.

The saved folder holds `config.json`, `model.safetensors`, `vectors.npy` (the target's template
vectors), `reference.json` (the pool's rarity statistics), `threshold.json`, `report.json` and, when
known, `templates.json` and `template_prior.json` (`fusionlog.template_prior`: what the sources' labelled
templates say the target's templates mean, already applied to `reference.json`'s surprise weights); it
loads with no training code, no LLM and no pickle.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fusionlog import __version__
from fusionlog.constants import (
    CONFIG_NAME,
    FORMAT_VERSION,
    MODEL_WEIGHTS_NAME,
    REPORT_NAME,
    TEMPLATES_NAME,
    THRESHOLD_NAME,
    VECTORS_NAME,
)
from fusionlog.errors import ArtifactError, ConfigError, NotFittedError
from fusionlog.io import atomic_save_npy, atomic_write_bytes, atomic_write_json, load_npy
from fusionlog.model import (
    ANCHOR_TEXTS,
    ReferenceStats,
    SessionModel,
    SessionModelConfig,
    encode_sessions,
    score_encoded,
    surprising,
)
from fusionlog.template_prior import TEMPLATE_PRIOR_NAME, TemplatePrior, fit_template_prior
from fusionlog.threshold import DEFAULT_THRESHOLD_RULE, THRESHOLD_RULES, ThresholdResult, choose_threshold
from fusionlog.types import Session

logger = logging.getLogger(__name__)

REFERENCE_NAME = "reference.json"


@dataclass
class SystemSessions:
    """One system's template vectors and some of its sessions (labelled for a source, not for a target)."""

    name: str
    system: str
    vectors: np.ndarray  # (n_templates, dim) float32, row i = template i
    sessions: list[Session]
    templates: list[str] | None = None

    @classmethod
    def from_prepared(cls, prepared, sessions: Sequence[Session] | None = None) -> SystemSessions:
        """From a `fusionlog.prepare.PreparedDataset`; `sessions` defaults to all of its sessions."""
        ds = prepared.dataset
        return cls(ds.name, ds.system, prepared.vectors, list(ds.sessions if sessions is None else sessions),
                   list(ds.templates))


@dataclass
class DetectorReport:
    """What a fit did, for `report.json` and the eval harness."""

    train_seconds: float = 0.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    target: str = ""
    pool_sessions: int = 0
    train_config: dict = field(default_factory=dict)


def embed_anchors(embedder=None) -> np.ndarray:
    """(len(ANCHOR_TEXTS), dim) unit vectors of the anchor phrases in the shared space (cached by text)."""
    if embedder is None:
        from fusionlog.embedding import Embedder

        embedder = Embedder()
    return embedder.encode(list(ANCHOR_TEXTS))


class Detector:
    """Zero-label session anomaly detector for one target system (see module docstring)."""

    def __init__(
        self,
        model_config: SessionModelConfig | None = None,
        train_config=None,  # fusionlog.training.TrainConfig; imported lazily so loading needs no trainer
        threshold_rule: str = DEFAULT_THRESHOLD_RULE,
        contamination: float = 0.05,
        score_batch_size: int = 256,
    ) -> None:
        if threshold_rule not in THRESHOLD_RULES:
            raise ConfigError(f"threshold_rule={threshold_rule!r}: must be one of {THRESHOLD_RULES}")
        self.model_config = model_config or SessionModelConfig()
        self.train_config = train_config
        self.threshold_rule = threshold_rule
        self.contamination = contamination
        self.score_batch_size = score_batch_size

    # -- fit ---------------------------------------------------------------------------------------

    def fit(
        self,
        sources: Sequence[SystemSessions],
        target: SystemSessions,
        anchor_vectors: np.ndarray | None = None,
    ) -> Detector:
        """Train on labelled `sources` and the unlabelled `target` pool; set `threshold_`. Returns self.

        `anchor_vectors` are the embeddings of `model.ANCHOR_TEXTS` (computed with the default
        `Embedder` when not given). Raises `LabelLeakError` if any target session carries a label.
        """
        from fusionlog.training import SystemData, TrainConfig, assert_unlabelled, train_model

        assert_unlabelled(target.sessions, f"target {target.name} adaptation pool")
        cfg = self.train_config or TrainConfig()
        same = [s.name for s in sources if s.system == target.system]
        if same:
            raise ConfigError(f"sources {same} are the target's system {target.system!r}; use other systems")
        mc = self.model_config
        src_data = [
            SystemData.build(s.name, s.system, s.vectors, s.sessions, mc.max_len, True, cfg.device,
                             trim=mc.trim_reference)
            for s in sources
        ]
        tgt_data = SystemData.build(target.name, target.system, target.vectors, target.sessions, mc.max_len, False,
                                    cfg.device, trim=mc.trim_reference)
        if mc.anchors and anchor_vectors is None:
            anchor_vectors = embed_anchors()
        result = train_model(src_data, tgt_data, mc, cfg, anchor_vectors)
        self.model_ = result.model.cpu().eval()
        self.prior_ = (fit_template_prior([(s.system, s.vectors, s.sessions) for s in sources])
                       if cfg.template_prior else None)
        self._set_target(target, tgt_data.stats)
        if self.prior_ is not None:  # scoring only: training read the plain surprise of every system
            self.stats_ = self.stats_.with_have_weights(self.prior_weights())
        # the same pool scoring the rounds re-threshold with, so a rule means the same in every round
        pool_logits, pool_counts, self.pool_surprising_ = self.pool_inputs(target.sessions)
        # kept for diagnostics (the harness saves them so threshold rules can be compared offline)
        self.pool_scores_ = (pool_logits, pool_counts)
        self.source_validation_ = [(v.system, v.scores, v.labels, v.counts) for v in result.validation]
        self.threshold_info_ = self.pool_threshold(pool_logits, pool_counts, self.pool_surprising_)
        self.threshold_ = float(self.threshold_info_.value)
        self.report_ = DetectorReport(
            round(result.seconds, 3), result.best_epoch, result.history, [s.name for s in sources], target.name,
            len(target.sessions), asdict(cfg),
        )
        return self

    def _set_target(self, target: SystemSessions, stats: ReferenceStats) -> None:
        self.system_ = target.system
        self.target_name_ = target.name
        self.vectors_ = np.asarray(target.vectors, dtype=np.float32)
        self._vectors_t = torch.from_numpy(self.vectors_)
        self.stats_ = stats
        self.templates_ = list(target.templates) if target.templates is not None else None

    def prior_weights(self) -> np.ndarray:
        """(n_templates,) the template prior's surprise weights of the target's templates (1 each without one).

        The base the LLM's verdicts add to (`distill.template_teacher.TemplateTeacher.have_weights`): every
        round recomputes the weights from it, so they never compound over rounds or a resume.
        """
        self._check_fitted()
        if self.prior_ is None or len(self.vectors_) == 0:
            return np.ones(len(self.stats_.doc_freq), dtype=np.float64)
        return self.prior_.have_weights(self.vectors_)

    def set_have_weights(self, weights: np.ndarray | None) -> None:
        """Count having target template t in the set surprise as `weights[t]` times its rarity (None: plain).

        The distillation rounds set these from the LLM's per-template verdicts (`ReferenceStats.
        with_have_weights`); they are saved in `reference.json`, so the served model needs no LLM. Scores
        change: the caller re-thresholds.
        """
        self._check_fitted()
        self.stats_ = self.stats_.with_have_weights(weights)

    # -- inference (never mutates state) -------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("Detector is not fitted: call fit(...) or Detector.from_pretrained(dir)")

    def decision_function(self, sessions: Sequence[Session]) -> np.ndarray:
        """(n,) float32 anomaly scores (logits), higher = more anomalous. Labels are ignored."""
        self._check_fitted()
        if not sessions:
            return np.zeros(0, dtype=np.float32)
        enc = encode_sessions(sessions, self.stats_, self.model_.config.max_len, in_corpus=False,
                              system=self.system_)
        return score_encoded(self.model_, enc, self._vectors_t, self.score_batch_size)[enc.index]

    def pool_decision(self, pool: Sequence[Session]) -> tuple[np.ndarray, np.ndarray]:
        """(scores, counts), one per distinct model input of the detector's own adaptation pool.

        The pool is the reference corpus, so each of its sessions is scored leave-one-out, as `fit`
        scores it for the threshold; `decision_function` would count a pool session in its own rarity
        and make a pool-only behaviour look less rare than a new session with it.
        """
        scores, counts, _ = self.pool_inputs(pool)
        return scores, counts

    def pool_inputs(self, pool: Sequence[Session]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`pool_decision`'s (scores, counts) plus, per input, whether its surprise is above 1 unit (the
        `pool-surprise` rule's pseudo-labels, a function of the pool alone), from one encoding of the pool."""
        self._check_fitted()
        enc = encode_sessions(pool, self.stats_, self.model_.config.max_len, in_corpus=True, system=self.system_)
        scores = score_encoded(self.model_, enc, self._vectors_t, self.score_batch_size)
        return (np.asarray(scores, dtype=np.float64), np.asarray(enc.counts, dtype=np.float64),
                surprising(enc.session_features))

    def pool_threshold(self, scores: np.ndarray, counts: np.ndarray, surprising: np.ndarray) -> ThresholdResult:
        """The detector's label-free rule on `pool_inputs`' output; `fit` and every distillation round call it,
        so a rule reads the same inputs (held-out source scores, the 1-unit floor) whichever sets the cut."""
        return choose_threshold(
            self.threshold_rule,
            pool_scores=scores,
            pool_weights=counts,
            pool_surprising=surprising,
            source_validation=getattr(self, "source_validation_", ()),
            contamination=self.contamination,
            unit_floor=self.model_.unit_floor(),
        )

    def predict(self, sessions: Sequence[Session]) -> np.ndarray:
        """(n,) int 0/1: 1 where the score is above `threshold_`."""
        return (self.decision_function(sessions) > self.threshold_).astype(np.int64)

    # -- persistence ---------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> None:
        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save

        atomic_write_json(folder / CONFIG_NAME, {
            "format_version": FORMAT_VERSION,
            "model_type": "Detector",
            "model": asdict(self.model_.config),
            "threshold_rule": self.threshold_rule,
            "contamination": self.contamination,
            "system": self.system_,
            "target": self.target_name_,
            "versions": {"fusionlog": __version__, "torch": torch.__version__, "python": platform.python_version()},
        })
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        atomic_write_bytes(folder / MODEL_WEIGHTS_NAME, save(tensors))
        atomic_save_npy(folder / VECTORS_NAME, self.vectors_)
        atomic_write_json(folder / REFERENCE_NAME, self.stats_.to_dict())
        atomic_write_json(folder / THRESHOLD_NAME, self.threshold_info_.to_dict())
        atomic_write_json(folder / REPORT_NAME, asdict(self.report_))
        if self.templates_ is not None:
            atomic_write_json(folder / TEMPLATES_NAME, {"system": self.system_, "templates": self.templates_})
        prior_path = folder / TEMPLATE_PRIOR_NAME
        if self.prior_ is not None:
            atomic_write_json(prior_path, self.prior_.to_dict())
        elif prior_path.is_file():  # a folder re-used for a detector without one must not keep a stale prior
            prior_path.unlink()

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Detector:
        folder = Path(folder)
        needed = (CONFIG_NAME, MODEL_WEIGHTS_NAME, VECTORS_NAME, REFERENCE_NAME, THRESHOLD_NAME)
        for name in needed:
            if not (folder / name).is_file():
                raise ArtifactError(f"{folder}: missing {name}")
        try:
            cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
            threshold = ThresholdResult.from_dict(json.loads((folder / THRESHOLD_NAME).read_text(encoding="utf-8")))
            stats = ReferenceStats.from_dict(json.loads((folder / REFERENCE_NAME).read_text(encoding="utf-8")))
            report_path = folder / REPORT_NAME
            report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
            templates_path = folder / TEMPLATES_NAME
            templates = (json.loads(templates_path.read_text(encoding="utf-8"))["templates"]
                         if templates_path.is_file() else None)
            prior_path = folder / TEMPLATE_PRIOR_NAME
            prior = (TemplatePrior.from_dict(json.loads(prior_path.read_text(encoding="utf-8")))
                     if prior_path.is_file() else None)
        except (ValueError, KeyError) as exc:
            raise ArtifactError(f"{folder}: unreadable detector file ({exc})") from exc
        if cfg.get("model_type") != "Detector":
            raise ArtifactError(f"{folder / CONFIG_NAME}: model_type {cfg.get('model_type')!r} is not 'Detector'")
        if cfg.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{folder}: format_version {cfg.get('format_version')} != {FORMAT_VERSION}")
        model = SessionModel.from_config_and_weights(cfg["model"], folder / MODEL_WEIGHTS_NAME)
        det = cls(model.config, None, cfg.get("threshold_rule", DEFAULT_THRESHOLD_RULE),
                  cfg.get("contamination", 0.05))
        det.model_ = model
        vectors = load_npy(folder / VECTORS_NAME)
        det._set_target(SystemSessions(cfg.get("target", ""), cfg.get("system", ""), vectors, [], templates), stats)
        det.threshold_info_ = threshold
        det.threshold_ = threshold.value
        det.prior_ = prior
        det.report_ = DetectorReport(**{k: v for k, v in report.items() if k in DetectorReport.__dataclass_fields__})
        return det
