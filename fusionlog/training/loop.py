"""The training loop shared by every method: supervised, meta-learning, domain-adversarial.

Each step draws one batch per source system (so a small system weighs as much as a large one) and,
when the discriminator is on, one batch of the target's unlabelled pool. Early stopping and the best
epoch are chosen on held-out *source* groups only (class-weighted validation loss).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fusionlog.errors import ConfigError, DataError
from fusionlog.model import Batch, SessionModel, SessionModelConfig, make_batch, score_encoded
from fusionlog.threads import torch_threads
from fusionlog.training.adversarial import DomainDiscriminator, dann_schedule, domain_loss
from fusionlog.training.config import TrainConfig
from fusionlog.training.data import LabelLeakError, Sampler, SystemData, split_groups
from fusionlog.training.meta import functional_forward, inner_update

logger = logging.getLogger(__name__)


@dataclass
class ValidationScores:
    """Held-out source groups of one system with the final model's logits (for the threshold)."""

    system: str
    scores: np.ndarray  # (G,) logits
    labels: np.ndarray  # (G,) 0/1
    counts: np.ndarray  # (G,) sessions per group


@dataclass
class TrainResult:
    model: SessionModel
    config: TrainConfig
    best_epoch: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    validation: list[ValidationScores] = field(default_factory=list)


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, class_weight: dict[int, float]) -> torch.Tensor:
    """Mean BCE with each class weighted so that it contributes half of the system's expected loss."""
    w = torch.where(labels > 0.5, class_weight[1], class_weight[0]).to(logits.dtype)
    return (w * nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")).mean()


def resolve_device(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"TrainConfig.device={name!r}: CUDA is not available on this machine")
    return dev


def train_model(
    sources: Sequence[SystemData],
    target: SystemData | None,
    model_config: SessionModelConfig,
    config: TrainConfig,
    anchor_vectors: np.ndarray | None = None,
) -> TrainResult:
    """Train a fresh `SessionModel`; `target` (unlabelled pool) is used only by the discriminator.

    Runs on `config.threads` torch threads and gives the process its count back after (`torch_threads`)."""
    with torch_threads(config.threads):
        return _train_model(sources, target, model_config, config, anchor_vectors)


def _train_model(
    sources: Sequence[SystemData],
    target: SystemData | None,
    model_config: SessionModelConfig,
    config: TrainConfig,
    anchor_vectors: np.ndarray | None,
) -> TrainResult:
    if not sources:
        raise DataError("no source systems to train on")
    if target is not None:
        if np.isfinite(target.encoded.labels).any():
            raise LabelLeakError(f"target {target.name}: the encoded adaptation pool carries labels")
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)

    samplers, val_groups = [], []
    for src in sources:
        if not np.isfinite(src.encoded.labels).all():
            raise DataError(f"source {src.name}: unlabelled sessions")
        tr, va = split_groups(src.encoded, config.val_fraction, rng)
        samplers.append(Sampler.build(src.encoded, tr, config.count_power, config.class_weighting, True))
        val_groups.append(va)
    use_adv = target is not None and config.adversarial_weight > 0
    target_sampler = (
        Sampler.build(target.encoded, np.arange(len(target.encoded)), config.count_power, False, False)
        if use_adv else None
    )
    sizes = np.array([float(src.encoded.counts.sum()) for src in sources])
    # Why sqrt: a 100-window source (BGL 2k) should not weigh as much as a 5,000-session one, nor 50x less.
    raw = np.sqrt(sizes) if config.system_weighting == "sqrt" else np.ones_like(sizes)
    system_weights = raw / raw.sum()
    use_meta = config.meta and len(sources) >= 2
    if config.meta and not use_meta:
        logger.warning("meta-learning needs >= 2 source systems; training supervised on %s", sources[0].name)

    model = SessionModel(model_config)
    if model_config.anchors:
        if anchor_vectors is None:
            raise ConfigError("model_config.anchors > 0 needs anchor_vectors (embed model.ANCHOR_TEXTS)")
        model.set_anchor_vectors(anchor_vectors)
    model = model.to(device)
    disc = DomainDiscriminator(model_config.feature_dim, config.discriminator_hidden).to(device) if use_adv else None
    params = list(model.parameters()) + (list(disc.parameters()) if disc is not None else [])
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    total_steps = config.epochs * config.steps_per_epoch
    best_loss, best_epoch, best_state, bad_epochs = float("inf"), -1, None, 0
    history: list[dict] = []
    step = 0
    for epoch in range(config.epochs):
        model.train()
        sums = {"source": 0.0, "meta_test": 0.0, "domain": 0.0, "domain_acc": 0.0}
        te = time.perf_counter()
        for _ in range(config.steps_per_epoch):
            batches = [
                make_batch(src.encoded, s.draw(rng, config.batch_size), src.vectors, device)
                for src, s in zip(sources, samplers, strict=True)
            ]
            lam = config.adversarial_weight * dann_schedule(step / max(total_steps - 1, 1))
            target_batch = (
                make_batch(target.encoded, target_sampler.draw(rng, config.batch_size), target.vectors, device)
                if use_adv else None
            )
            with _double_backward_safe(device, use_meta and config.meta_order == "second"):
                losses = _step_losses(model, disc, batches, samplers, system_weights, target_batch, lam, step,
                                  use_meta, config)
                opt.zero_grad(set_to_none=True)
                losses["total"].backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            for k in sums:
                if k in losses:
                    sums[k] += float(losses[k].detach())
            step += 1
        val_loss = _validation_loss(model, sources, samplers, val_groups, system_weights, config, device)
        record = {k: round(v / config.steps_per_epoch, 5) for k, v in sums.items()}
        record.update(epoch=epoch, val_loss=round(val_loss, 5), seconds=round(time.perf_counter() - te, 2))
        history.append(record)
        logger.info("epoch %d: %s", epoch, record)
        if val_loss < best_loss - 1e-4:
            best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs > config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    validation = [
        ValidationScores(
            src.system,
            score_encoded(model, src.encoded.subset(va), src.vectors, device=device) if len(va) else np.zeros(0),
            src.encoded.labels[va].astype(np.int64),
            src.encoded.counts[va],
        )
        for src, va in zip(sources, val_groups, strict=True)
    ]
    return TrainResult(model, config, best_epoch, time.perf_counter() - t0, history, validation)


def _weighted_mean(losses: list[torch.Tensor], weights: np.ndarray) -> torch.Tensor:
    w = torch.as_tensor(weights / weights.sum(), dtype=losses[0].dtype, device=losses[0].device)
    return (torch.stack(losses) * w).sum()


def _double_backward_safe(device: torch.device, second_order: bool):
    """cuDNN's GRU has no double backward; the second-order meta step on CUDA uses the native kernels."""
    if second_order and device.type == "cuda":
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def _step_losses(
    model: SessionModel,
    disc: DomainDiscriminator | None,
    batches: list[Batch],
    samplers: list[Sampler],
    system_weights: np.ndarray,
    target_batch: Batch | None,
    lam: float,
    step: int,
    use_meta: bool,
    config: TrainConfig,
) -> dict[str, torch.Tensor]:
    """Losses of one meta-task (or one supervised step) plus the domain loss."""
    out: dict[str, torch.Tensor] = {}
    if use_meta:
        held_out = step % len(batches)  # rotate the meta-test system (Algorithm 1's target split)
        train_idx = [i for i in range(len(batches)) if i != held_out]
        params = dict(model.named_parameters())
        outs = [functional_forward(model, params, batches[i]) for i in train_idx]
        per_system = [
            weighted_bce(o.logits, batches[i].labels, samplers[i].class_weight)
            for o, i in zip(outs, train_idx, strict=True)
        ]
        loss_s = _weighted_mean(per_system, system_weights[train_idx])
        adapted = inner_update(params, loss_s, config.inner_lr, config.meta_order)
        out_t = functional_forward(model, adapted, batches[held_out])
        loss_t = weighted_bce(out_t.logits, batches[held_out].labels, samplers[held_out].class_weight)
        out["meta_test"] = loss_t
        total = loss_s + config.meta_weight * loss_t
        source_features = torch.cat([o.features for o in outs])
    else:
        outs = [model(b.x, b.mask, b.session_features) for b in batches]
        loss_s = _weighted_mean(
            [weighted_bce(o.logits, b.labels, s.class_weight) for o, b, s in zip(outs, batches, samplers, strict=True)],
            system_weights,
        )
        total = loss_s
        source_features = torch.cat([o.features for o in outs])
    out["source"] = loss_s
    if disc is not None and target_batch is not None:
        if torch.isfinite(target_batch.labels).any():
            raise LabelLeakError("target labels reached a training batch")
        tgt = model(target_batch.x, target_batch.mask, target_batch.session_features).features
        loss_d, acc = domain_loss(disc, source_features, tgt, lam)
        out["domain"] = loss_d
        out["domain_acc"] = torch.tensor(acc)
        total = total + loss_d
    out["total"] = total
    return out


@torch.no_grad()
def _validation_loss(
    model: SessionModel,
    sources: Sequence[SystemData],
    samplers: list[Sampler],
    val_groups: list[np.ndarray],
    system_weights: np.ndarray,
    config: TrainConfig,
    device: torch.device,
) -> float:
    """Weighted mean over source systems of the class-weighted BCE on held-out groups (count**power weights)."""
    per_system, weights = [], []
    for src, sampler, va, sw in zip(sources, samplers, val_groups, system_weights, strict=True):
        if not len(va):
            continue
        logits = torch.from_numpy(score_encoded(model, src.encoded.subset(va), src.vectors, device=device))
        labels = torch.from_numpy(src.encoded.labels[va])
        w = torch.from_numpy(src.encoded.counts[va].astype(np.float32) ** config.count_power)
        w = w * torch.where(labels > 0.5, sampler.class_weight[1], sampler.class_weight[0])
        bce = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        per_system.append(float((w * bce).sum() / w.sum()))
        weights.append(sw)
    model.train()
    return float(np.average(per_system, weights=weights)) if per_system else 0.0
