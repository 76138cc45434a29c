"""LoRA on the LLM side (peft), trained on labelled SOURCE sessions only, plus its calibration.

Why: zero-shot, the embedded models barely separate normal from anomalous sessions. A rank-4
adapter on the attention projections, trained for one pass over ~100 short prompts (the same
prompt file and shape the labeller uses, without few-shot examples), teaches the answer format and
what "anomalous" looks like in other systems' logs. Then the probability is calibrated (Platt) on
held-out source sessions. Target labels are never read here: `tune` takes source datasets only.

Artifact (a folder): peft's `adapter_model.safetensors` + `adapter_config.json`, our
`fusionlog_adapter.json` (base model identity, prompt hash, settings, sources, losses, held-out
source quality before/after) and `calibration.json`. No pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from distill.backends.base import LABEL_WORDS
from distill.calibration import CALIBRATION_NAME, PlattCalibration, fit_platt
from distill.config import LabelConfig, TuneConfig
from distill.models import ResolvedModel
from distill.prompts import PromptTemplate
from distill.quality import prf, roc_auc
from fusionlog.constants import FORMAT_VERSION
from fusionlog.errors import ArtifactError, ConfigError
from fusionlog.io import atomic_write_json
from fusionlog.types import Session, SessionDataset

logger = logging.getLogger(__name__)

ADAPTER_META_NAME = "fusionlog_adapter.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"


def source_split(datasets: Sequence[SessionDataset], config: TuneConfig
                 ) -> tuple[list[tuple[SessionDataset, Session]], list[tuple[SessionDataset, Session]]]:
    """Balanced train / held-out sets of distinct source sequences (majority label per sequence).

    Sequences are pooled across sources, shuffled with the seed, and taken per label, so a source
    with many sessions does not crowd out the others' anomalies entirely, yet nothing is invented.
    """
    by_label: dict[int, list[tuple[SessionDataset, Session]]] = {0: [], 1: []}
    for ds in datasets:
        if not ds.labelled:
            raise ConfigError(f"llm-tune: source {ds.name!r} is not labelled; LoRA trains on labelled sources only")
        groups: dict[tuple[int, ...], list[Session]] = {}
        for s in ds.sessions:
            groups.setdefault(tuple(s.event_ids), []).append(s)
        for members in groups.values():
            label = int(sum(int(m.label) for m in members) * 2 >= len(members))
            rep = Session(ds.system, members[0].key, members[0].event_ids, label)
            by_label[label].append((ds, rep))
    rng = random.Random(config.seed)
    train, held = [], []
    for label, items in by_label.items():
        if len(items) < 2:
            raise ConfigError(
                f"llm-tune: sources have {len(items)} distinct {LABEL_WORDS[label]} sequence(s); need >= 2")
        rng.shuffle(items)
        n_cal = min(config.calib_per_class, len(items) // 2)
        held += items[:n_cal]
        train += items[n_cal:n_cal + config.train_per_class]
    rng.shuffle(train)
    return train, held


def tune(model_name: str | ResolvedModel, prompt: PromptTemplate, sources: Sequence[SessionDataset], out_dir: Path,
         config: TuneConfig | None = None, progress: bool = True) -> dict:
    """Train, evaluate on held-out source sequences (adapter off vs on), calibrate, save. Returns the meta."""
    import torch
    from peft import LoraConfig, get_peft_model

    from distill.backends.transformers_local import TransformersBackend
    from distill.labeller import render_messages

    config = config or TuneConfig()
    torch.manual_seed(config.seed)
    label_cfg = LabelConfig(k_examples=0, max_session_tokens=config.max_session_tokens)
    train, held = source_split(sources, config)
    t0 = time.perf_counter()
    backend = TransformersBackend(model_name)
    tok = backend.tokenizer

    def prompt_ids(ds: SessionDataset, s: Session) -> list[int]:
        return backend.encode(render_messages(prompt, label_cfg, s, ds.templates, ds.system))

    held_msgs = [render_messages(prompt, label_cfg, s, ds.templates, ds.system) for ds, s in held]
    held_y = np.array([s.label for _, s in held])
    before = np.array([r.p_anomalous for r in backend.score(held_msgs)])

    peft_cfg = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=list(config.target_modules), task_type="CAUSAL_LM", bias="none")
    model = get_peft_model(backend.model, peft_cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    answers = [tok.encode(w, add_special_tokens=False) for w in LABEL_WORDS]
    losses: list[float] = []
    steps = config.epochs * len(train)
    bar = _bar(steps, progress, "llm-tune")
    step = 0
    for _ in range(config.epochs):
        for ds, s in train:
            ids = prompt_ids(ds, s)
            ans = answers[int(s.label)]
            x = torch.tensor([ids + ans])
            y = torch.tensor([[-100] * len(ids) + ans])
            loss = model(input_ids=x, labels=y).loss / config.grad_accum
            loss.backward()
            losses.append(float(loss.detach()) * config.grad_accum)
            step += 1
            if step % config.grad_accum == 0 or step == steps:
                opt.step()
                opt.zero_grad(set_to_none=True)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-16:]):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    train_seconds = time.perf_counter() - t0
    backend.model = model  # score held-out sessions with the adapter on
    after = np.array([r.p_anomalous for r in backend.score(held_msgs)])
    calibration = fit_platt(after, held_y)
    calibration = PlattCalibration(calibration.a, calibration.b, calibration.n, "source")
    cal_probs = np.array([calibration.apply(p) for p in after])

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    calibration.save(out_dir / CALIBRATION_NAME)
    meta = {
        "format_version": FORMAT_VERSION,
        "base_model": backend.resolved.name,
        "base_identity": backend.resolved.identity,
        "prompt": prompt.name,
        "prompt_sha256": prompt.sha256,
        "label_settings": {"k_examples": 0, "max_session_tokens": config.max_session_tokens},
        "tune": asdict(config),
        "sources": sorted({ds.name for ds in sources}),
        "train_sequences": {"normal": sum(1 for _, s in train if s.label == 0),
                            "anomalous": sum(1 for _, s in train if s.label == 1)},
        "heldout_sequences": {"normal": int((held_y == 0).sum()), "anomalous": int((held_y == 1).sum())},
        "loss_first16": round(float(np.mean(losses[:16])), 4) if losses else None,
        "loss_last16": round(float(np.mean(losses[-16:])), 4) if losses else None,
        "heldout_source_quality": {
            "base": _quality(held_y, before),
            "lora": _quality(held_y, after),
            "lora_calibrated": _quality(held_y, cal_probs),
        },
        "calibration": asdict(calibration),
        "heldout_probs": {"labels": held_y.tolist(), "base": [round(float(p), 6) for p in before],
                          "lora": [round(float(p), 6) for p in after]},
        "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(train_seconds, 1),
    }
    atomic_write_json(out_dir / ADAPTER_META_NAME, meta)
    logger.info("LoRA adapter saved to %s (held-out source F1 base %.3f -> lora %.3f)", out_dir,
                meta["heldout_source_quality"]["base"]["f1"], meta["heldout_source_quality"]["lora_calibrated"]["f1"])
    return meta


def calibrate(backend, prompt: PromptTemplate, sources: Sequence[SessionDataset], config: TuneConfig | None = None
              ) -> tuple[PlattCalibration, dict]:
    """Calibration alone (no LoRA): Platt on held-out source sequences for any loaded backend."""
    from distill.labeller import render_messages

    config = config or TuneConfig()
    label_cfg = LabelConfig(k_examples=0, max_session_tokens=config.max_session_tokens)
    _, held = source_split(sources, config)
    msgs = [render_messages(prompt, label_cfg, s, ds.templates, ds.system) for ds, s in held]
    y = np.array([s.label for _, s in held])
    probs = np.array([r.p_anomalous if r.ok else 0.5 for r in backend.score(msgs)])
    cal = fit_platt(probs, y)
    return cal, {"raw": _quality(y, probs), "calibrated": _quality(y, np.array([cal.apply(p) for p in probs]))}


def _quality(y: np.ndarray, probs: np.ndarray) -> dict:
    return dict(prf(y.tolist(), (probs >= 0.5).astype(int).tolist()), roc_auc=roc_auc(y.tolist(), probs.tolist()),
                mean_p=round(float(np.mean(probs)), 4))


def read_adapter_meta(folder: Path) -> dict:
    folder = Path(folder)
    for name in (ADAPTER_META_NAME, ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME):
        if not (folder / name).is_file():
            raise ArtifactError(f"adapter {folder}: missing {name} (made by `fusionlog llm-tune`?)")
    try:
        return json.loads((folder / ADAPTER_META_NAME).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ArtifactError(f"adapter {folder}: bad {ADAPTER_META_NAME}: {exc}") from exc


def apply_adapter(model, folder: Path, resolved: ResolvedModel):
    """Wrap `model` with the saved adapter after checking it was trained on this exact base model."""
    from peft import PeftModel

    meta = read_adapter_meta(folder)
    if meta.get("base_identity") != resolved.identity:
        raise ArtifactError(
            f"adapter {folder} was trained on {meta.get('base_identity')!r}, not {resolved.identity!r}"
        )
    digest = hashlib.sha256((Path(folder) / ADAPTER_WEIGHTS_NAME).read_bytes()).hexdigest()[:16]
    return PeftModel.from_pretrained(model, str(folder), is_trainable=False), digest


def _bar(total: int, progress: bool, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex")
