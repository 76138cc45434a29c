"""Distil soft labels into the small model: a short fine-tune of the round-0 detector.

Why a fine-tune and not a retrain: round 0 already holds what the sources teach (meta-learned,
domain-aligned); the LLM's labels only have to move it on the target sessions it was wrong about. The
source loss keeps running beside the distillation loss so the model does not forget the sources, but
by default it trains only the wide (rarity) path: what the GRU learns from the sources' words is what
did not transfer (issue 3's leave-one-source-system-out selection bounded it to 0.01), so in the rounds
the deep path, widened by the LLM's trust, learns from the target's teacher labels alone.

The distillation loss is the usual temperature-softened cross-entropy: teacher probability p becomes
q = sigmoid(logit(p) / T), the student's logit z is read as sigmoid(z / T), and the loss is scaled by
T^2 (Hinton et al.), each session weighted by how sure the teacher was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fusionlog.config import register_config_type
from fusionlog.errors import ConfigError, DataError
from fusionlog.threads import torch_threads
from fusionlog.types import Session

logger = logging.getLogger(__name__)


@register_config_type
@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = field(default=60, metadata={"help": "optimizer steps per distillation round"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate of the fine-tune"})
    batch_size: int = field(default=32, metadata={"help": "sessions per source / target batch"})
    temperature: float = field(default=2.0, metadata={"help": "distillation temperature T"})
    target_weight: float = field(default=1.0, metadata={"help": "weight of the distillation loss vs the source loss"})
    source_trains_deep: bool = field(default=False, metadata={
        "help": "let the source loss train the deep (GRU) path too; off: it learns the target's teacher labels only"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads of the fine-tune (0 = the process's)"})
    seed: int = 0

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError("FinetuneConfig.threads must be >= 0")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("FinetuneConfig.steps and batch_size must be >= 1")
        if self.lr <= 0 or self.temperature <= 0 or self.target_weight < 0:
            raise ConfigError("FinetuneConfig: lr and temperature must be > 0, target_weight >= 0")


def soft_bce(logits: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """Weighted, temperature-softened BCE between student logits and teacher probabilities."""
    p = teacher.clamp(1e-4, 1 - 1e-4)
    q = torch.sigmoid(torch.logit(p) / temperature)
    per = nn.functional.binary_cross_entropy_with_logits(logits / temperature, q, reduction="none")
    return (temperature**2) * (per * weights).sum() / weights.sum().clamp(min=1e-8)


def finetune(
    detector,
    sources: Sequence,
    pool: Sequence[Session],
    teacher: np.ndarray,
    weights: np.ndarray,
    config: FinetuneConfig | None = None,
) -> dict:
    """Fine-tune `detector.model_` in place on sources + teacher-labelled pool sessions.

    `teacher[i]` is P(anomalous) for pool session i (NaN = no teacher label); `weights[i]` >= 0. Pool
    sessions reach the model only through `teacher`: their true labels must be None.
    """
    from fusionlog.model import encode_sessions, make_batch
    from fusionlog.training import SystemData
    from fusionlog.training.data import Sampler
    from fusionlog.training.loop import weighted_bce

    cfg = config or FinetuneConfig()
    if any(s.label is not None for s in pool):
        raise DataError("finetune: pool sessions carry labels; target labels must never reach training")
    teacher = np.asarray(teacher, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    if teacher.shape != (len(pool),) or weights.shape != (len(pool),):
        raise ConfigError(f"finetune: teacher/weights must have shape ({len(pool)},)")
    chosen = np.flatnonzero(np.isfinite(teacher) & (weights > 0))
    if len(chosen) == 0:
        return {"steps": 0, "teacher_sessions": 0}
    t0 = time.perf_counter()
    model = detector.model_
    mc = model.config
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    src_data = [SystemData.build(s.name, s.system, s.vectors, s.sessions, mc.max_len, True, trim=mc.trim_reference)
                for s in sources]
    samplers = [
        Sampler.build(d.encoded, np.arange(len(d.encoded)), 0.5, True, True) for d in src_data
    ]
    # Teacher probabilities ride in the label slot of the encoding (a float); identical sequences with
    # different teacher values stay separate groups.
    taught = [
        Session(pool[i].system, pool[i].key, pool[i].event_ids, float(teacher[i]), pool[i].start, pool[i].end)
        for i in chosen
    ]
    enc = encode_sessions(taught, detector.stats_, mc.max_len, in_corpus=True, system=detector.system_)
    group_w = np.zeros(len(enc), dtype=np.float64)
    np.add.at(group_w, enc.index, weights[chosen])
    group_w /= np.maximum(enc.counts, 1)  # mean teacher weight per group
    mass = (enc.counts.astype(np.float64) ** 0.5) * group_w
    probs = mass / mass.sum()
    vectors = detector._vectors_t

    with torch_threads(cfg.threads):  # the process's count (an LLM's, in fuse) is given back after
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sums = {"source": 0.0, "distill": 0.0}
        for _ in range(cfg.steps):
            loss_src = torch.zeros(())
            for d, s in zip(src_data, samplers, strict=True):
                b = make_batch(d.encoded, s.draw(rng, cfg.batch_size), d.vectors)
                out_src = model(b.x, b.mask, b.session_features, deep_grad=cfg.source_trains_deep)
                loss_src = loss_src + weighted_bce(out_src.logits, b.labels,
                                                   s.class_weight) / len(src_data)
            groups = rng.choice(len(enc), size=cfg.batch_size, replace=True, p=probs)
            b = make_batch(enc, groups, vectors)
            w = torch.as_tensor(group_w[groups], dtype=torch.float32)
            loss_t = soft_bce(model(b.x, b.mask, b.session_features).logits, b.labels, w, cfg.temperature)
            loss = loss_src + cfg.target_weight * loss_t
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sums["source"] += float(loss_src.detach())
            sums["distill"] += float(loss_t.detach())
    model.eval()
    out = {
        "steps": cfg.steps,
        "teacher_sessions": int(len(chosen)),
        "teacher_groups": int(len(enc)),
        "source_loss": round(sums["source"] / cfg.steps, 5),
        "distill_loss": round(sums["distill"] / cfg.steps, 5),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    logger.info("distillation fine-tune: %s", out)
    return out
