"""A detector artifact loaded for serving: the `SessionScorer` behind `fusionlog detect` and the HTTP service.

Loads safetensors + JSON only, and imports neither the trainers, the router, the LLM code, vllm nor
peft: serving must run where only the small model is installed. Raw lines are matched against the
artifact's template list (`TemplateMatcher`, which also reads artifacts trained on template sequences,
such as `openstack`); a line that matches nothing becomes a new template, embedded on the fly (the
embedding model is loaded only then) and counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fusionlog.config import SessionRule, config_from_dict
from fusionlog.constants import UNKNOWN_EVENT
from fusionlog.errors import ArtifactError
from fusionlog.scoring import SessionVerdict
from fusionlog.types import Session

logger = logging.getLogger(__name__)

SERVING_NAME = "serving.json"
NEAREST_NAME = "nearest_source.json"
TOP_TEMPLATES = 3


class ArtifactScorer:
    """Implements `fusionlog.scoring.SessionScorer` over a saved Detector folder."""

    def __init__(self, model_dir: Path | str, embedder=None) -> None:
        from fusionlog.detector import Detector
        from fusionlog.matcher import TemplateMatcher

        self.model_dir = Path(model_dir)
        self.detector = Detector.from_pretrained(self.model_dir)
        if self.detector.templates_ is None:
            raise ArtifactError(f"{self.model_dir}: no templates.json; cannot match raw lines")
        serving = _read_json(self.model_dir / SERVING_NAME, {})
        rule = serving.get("rule")
        self.rule = config_from_dict(SessionRule, rule) if rule else SessionRule("lines", window=20)
        self.log_format = serving.get("log_format") or "<Content>"
        self.threshold = float(self.detector.threshold_)
        self.matcher = TemplateMatcher(list(self.detector.templates_))
        nearest = _read_json(self.model_dir / NEAREST_NAME, {"nearest": []})["nearest"]
        self.nearest: list[dict | None] = list(nearest)
        self._embedder = embedder
        self.new_templates_embedded = 0

    # -- parsing ---------------------------------------------------------------------------------
    def event_id(self, content: str) -> int:
        eid = self.matcher.event_id(content)
        new = self.matcher.take_new()
        if new:
            self._embed_new(new)
        return eid

    def template(self, event_id: int) -> str:
        if event_id == UNKNOWN_EVENT:
            return "<unknown template>"
        return self.matcher.template(event_id)

    def _embed_new(self, new: list[tuple[int, str]]) -> None:
        """Grow the vector table for templates first seen now (or widened since their first line)."""
        from fusionlog.embedding import Embedder, grow_vectors

        if self._embedder is None:
            self._embedder = Embedder()
        table = grow_vectors(self.detector.vectors_, new, self._embedder)
        self.detector.vectors_ = table
        self.detector._vectors_t = torch.from_numpy(table)
        self.new_templates_embedded += len(new)

    # -- scoring ---------------------------------------------------------------------------------
    def score_sessions(self, sessions: list[list[int]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores (n,) and, per session, attention over its model input (capped event ids)."""
        from fusionlog.model import encode_sessions, make_batch

        det = self.detector
        if not sessions:
            return np.zeros(0, np.float32), []
        objs = [Session(det.system_, str(i), list(ids)) for i, ids in enumerate(sessions)]
        enc = encode_sessions(objs, det.stats_, det.model_.config.max_len, in_corpus=False, system=det.system_)
        scores = np.empty(len(enc), np.float32)
        attn: list[np.ndarray] = [np.zeros(0, np.float32)] * len(enc)
        with torch.no_grad():
            for start in range(0, len(enc), det.score_batch_size):
                groups = list(range(start, min(start + det.score_batch_size, len(enc))))
                b = make_batch(enc, groups, det._vectors_t)
                out = det.model_(b.x, b.mask, b.session_features)
                scores[groups] = out.logits.float().numpy()
                w = out.attention.float().numpy()
                for row, g in enumerate(groups):
                    attn[g] = w[row, : len(enc.ids[g])]
        self._last_inputs = [enc.ids[g] for g in enc.index]
        return scores[enc.index], [attn[g] for g in enc.index]

    def verdicts(self, keys: list[str], sessions: list[list[int]]) -> list[SessionVerdict]:
        scores, attn = self.score_sessions(sessions)
        inputs = self._last_inputs if sessions else []
        out = []
        for key, ids, score, w, capped in zip(keys, sessions, scores, attn, inputs, strict=True):
            out.append(self._verdict(key, ids, float(score), w, capped))
        return out

    def _verdict(self, key: str, ids: Sequence[int], score: float, w: np.ndarray, capped: np.ndarray) -> SessionVerdict:
        weight: dict[int, float] = {}
        for eid, a in zip(capped.tolist(), w.tolist(), strict=True):
            weight[eid] = weight.get(eid, 0.0) + float(a)
        top = sorted(weight.items(), key=lambda kv: -kv[1])[:TOP_TEMPLATES]
        top_templates = [{"template": self.template(e), "attention": round(a, 4)} for e, a in top]
        nearest = None
        if top and 0 <= top[0][0] < len(self.nearest) and self.nearest[top[0][0]]:
            nearest = self.nearest[top[0][0]].get("text")
        n_known = self.matcher.n_known
        new = len({e for e in ids if e >= n_known or e == UNKNOWN_EVENT})
        unseen_pool = len({e for e in ids if 0 <= e < len(self.detector.stats_.doc_freq)
                           and self.detector.stats_.doc_freq[e] == 0})
        anomalous = score > self.threshold
        parts = [f"score {score:.3f} {'>' if anomalous else '<='} threshold {self.threshold:.3f}"]
        if top_templates:
            parts.append(f"most attention on '{top_templates[0]['template']}'")
        if new:
            parts.append(f"{new} template(s) never seen in training")
        if unseen_pool:
            parts.append(f"{unseen_pool} template(s) absent from the adaptation pool")
        return SessionVerdict(key, score, anomalous, len(ids), top_templates, nearest, "; ".join(parts), new)


def load_scorer(model_dir: Path | str) -> ArtifactScorer:
    return ArtifactScorer(model_dir)


def _read_json(path: Path, default):
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
