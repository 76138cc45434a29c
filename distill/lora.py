"""LoRA on the LLM side (peft): `tune` from labelled SOURCE sessions (+ calibration), and
`tune_on_examples` from given (prompt, label) pairs (the rounds' `--llm-lora`); one training loop.

Why: zero-shot, the embedded models barely separate normal from anomalous sessions. A rank-4
adapter on the attention projections, trained for one pass over ~100 short prompts (the same
prompt file and shape the labeller uses, without few-shot examples), teaches the answer format and
what "anomalous" looks like in other systems' logs. Then the probability is calibrated (Platt) on
held-out source sessions. Target labels are never read here: `tune` takes source datasets only, and
`tune_on_examples` gets pseudo-labels the small model and the LLM agreed on (see distill/rounds.py).

Artifact (a folder): peft's `adapter_model.safetensors` + `adapter_config.json`, our
`fusionlog_adapter.json` (base model identity, prompt hash, settings, sources, losses, held-out
source quality before/after) and, from `tune`, `calibration.json`. No pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from distill.backends.base import LABEL_WORDS, Messages
from distill.calibration import CALIBRATION_NAME, PlattCalibration, fit_platt
from distill.config import LabelConfig, TuneConfig
from distill.models import ResolvedModel
from distill.prompts import PromptTemplate
from distill.quality import prf, roc_auc
from fusionlog.constants import FORMAT_VERSION
from fusionlog.errors import ArtifactError, ConfigError
from fusionlog.io import atomic_write_json, publish_tree
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
    from distill.backends.transformers_local import TransformersBackend
    from distill.labeller import render_messages

    config = config or TuneConfig()
    label_cfg = LabelConfig(k_examples=0, max_session_tokens=config.max_session_tokens)
    train, held = source_split(sources, config)
    t0 = time.perf_counter()
    backend = TransformersBackend(model_name)
    held_msgs = [render_messages(prompt, label_cfg, s, ds.templates, ds.system) for ds, s in held]
    held_y = np.array([s.label for _, s in held])
    before = np.array([r.p_anomalous for r in backend.score(held_msgs)])

    examples = [(render_messages(prompt, label_cfg, s, ds.templates, ds.system), int(s.label)) for ds, s in train]
    model, run = train_adapter(backend, examples, config, progress=progress, desc="llm-tune")
    train_seconds = time.perf_counter() - t0
    after = np.array([r.p_anomalous for r in backend.score(held_msgs)])  # train_adapter left the adapter on
    calibration = fit_platt(after, held_y)
    calibration = PlattCalibration(calibration.a, calibration.b, calibration.n, "source")
    cal_probs = np.array([calibration.apply(p) for p in after])

    out_dir = Path(out_dir)
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
        "loss_first16": round(float(np.mean(run.losses[:16])), 4) if run.losses else None,
        "loss_last16": round(float(np.mean(run.losses[-16:])), 4) if run.losses else None,
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
    out_dir.mkdir(parents=True, exist_ok=True)
    calibration.save(out_dir / CALIBRATION_NAME)
    save_adapter(model, out_dir, meta)
    logger.info("LoRA adapter saved to %s (held-out source F1 base %.3f -> lora %.3f)", out_dir,
                meta["heldout_source_quality"]["base"]["f1"], meta["heldout_source_quality"]["lora_calibrated"]["f1"])
    return meta


class LoraSettings(Protocol):
    """The training knobs `train_adapter` reads; `TuneConfig` and `RoundLoraConfig` both have them."""

    rank: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]
    epochs: int
    lr: float
    grad_accum: int
    seed: int


@dataclass
class AdapterTraining:
    """What one `train_adapter` call did: the round record and the adapter meta quote it."""

    examples: int
    passes: int  # forward/backward passes (examples x epochs, or fewer under max_steps)
    steps: int  # optimizer steps
    losses: list[float]
    loss_before: float  # mean answer loss over the examples, before any update (eval mode)
    loss_after: float  # the same, after training
    seconds: float

    def summary(self) -> dict:
        return {"examples": self.examples, "passes": self.passes, "steps": self.steps,
                "loss_before": round(self.loss_before, 4), "loss_after": round(self.loss_after, 4),
                "train_seconds": round(self.seconds, 2)}


def train_adapter(backend, examples: Sequence[tuple[Messages, int]], settings: LoraSettings, *,
                  init_adapter: Path | None = None, progress: bool = False,
                  desc: str = "llm-lora") -> tuple[object, AdapterTraining]:
    """LoRA-train `backend`'s model to answer each example's label word; the one training loop.

    Why one function for both callers: `fusionlog llm-tune` (source sessions) and the rounds'
    `--llm-lora` (agreed target labels) must teach exactly the same thing -- the first answer word
    after the labeller's own prompt -- so an adapter from either loads and scores the same way.
    The backend's model is wrapped in place and left in eval mode with the adapter on, so the caller
    can score with it and save it. `init_adapter` continues from a saved adapter (same base model)
    instead of a fresh zero-initialised one. Examples are used in the given order; a `max_steps`
    attribute on `settings` (RoundLoraConfig has one) caps the optimizer steps.
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    if not examples:
        raise ConfigError("train_adapter: no examples to train on")
    if any(label not in (0, 1) for _, label in examples):
        raise ConfigError("train_adapter: labels must be 0 (normal) or 1 (anomalous)")
    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    tok = backend.tokenizer
    device = getattr(backend, "device", "cpu")
    answers = [tok.encode(w, add_special_tokens=False) for w in LABEL_WORDS]
    batches = []
    for messages, label in examples:
        ids = backend.encode(messages)
        ans = answers[int(label)]
        batches.append((torch.tensor([ids + ans], device=device), torch.tensor([[-100] * len(ids) + ans],
                                                                                device=device)))
    if init_adapter is not None:
        _check_base(Path(init_adapter), backend.resolved)
        model = PeftModel.from_pretrained(backend.model, str(init_adapter), is_trainable=True)
    else:
        peft_cfg = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                              target_modules=list(settings.target_modules), task_type="CAUSAL_LM", bias="none")
        model = get_peft_model(backend.model, peft_cfg)
    loss_before = _mean_loss(model, batches)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    passes = settings.epochs * len(batches)
    max_steps = getattr(settings, "max_steps", None)
    if max_steps is not None:
        passes = min(passes, max_steps * settings.grad_accum)
    losses: list[float] = []
    steps = 0
    bar = _bar(passes, progress, desc)
    for n in range(passes):
        x, y = batches[n % len(batches)]
        loss = model(input_ids=x, labels=y).loss / settings.grad_accum
        loss.backward()
        losses.append(float(loss.detach()) * settings.grad_accum)
        if (n + 1) % settings.grad_accum == 0 or n + 1 == passes:
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-16:]):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    backend.model = model
    run = AdapterTraining(len(batches), passes, steps, losses, loss_before, _mean_loss(model, batches),
                          time.perf_counter() - t0)
    return model, run


def _mean_loss(model, batches) -> float:
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        total = sum(float(model(input_ids=x, labels=y).loss) for x, y in batches)
    model.train(was_training)
    return total / len(batches)


def save_adapter(model, out_dir: Path, meta: dict) -> None:
    """peft's safetensors weights + config, then our meta (written last: its presence marks a whole adapter)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    publish_tree(out_dir)  # peft writes through safetensors' save_file: 0600
    atomic_write_json(out_dir / ADAPTER_META_NAME, meta)


def tune_on_examples(model_name: str | ResolvedModel, examples: Sequence[tuple[Messages, int]], out_dir: Path,
                     settings: LoraSettings, *, info: dict | None = None, init_adapter: Path | None = None,
                     device: str = "cpu", progress: bool = False) -> dict:
    """Load the base model, train an adapter on (prompt, label) examples, save it; returns the summary.

    Used between distillation rounds: a fresh base model per call (never the labelling backend,
    whose model and cache identity must not change under it), freed when done. `info` is merged
    into the adapter's meta (where the examples came from).
    """
    from distill.backends.transformers_local import TransformersBackend

    backend = TransformersBackend(model_name, device=device)
    try:
        model, run = train_adapter(backend, examples, settings, init_adapter=init_adapter, progress=progress)
        summary = run.summary()
        meta = {
            "format_version": FORMAT_VERSION,
            "base_model": backend.resolved.name,
            "base_identity": backend.resolved.identity,
            "settings": {k: getattr(settings, k) for k in (*LoraSettings.__annotations__, "max_steps")
                         if hasattr(settings, k)},
            "init_adapter": str(init_adapter) if init_adapter else None,
            **summary,
            "loss_first16": round(float(np.mean(run.losses[:16])), 4),
            "loss_last16": round(float(np.mean(run.losses[-16:])), 4),
            **(info or {}),
        }
        save_adapter(model, Path(out_dir), meta)
    finally:
        backend.close()
    return summary


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


def _check_base(folder: Path, resolved: ResolvedModel) -> dict:
    meta = read_adapter_meta(folder)
    if meta.get("base_identity") != resolved.identity:
        raise ArtifactError(
            f"adapter {folder} was trained on {meta.get('base_identity')!r}, not {resolved.identity!r}"
        )
    return meta


def apply_adapter(model, folder: Path, resolved: ResolvedModel):
    """Wrap `model` with the saved adapter after checking it was trained on this exact base model."""
    from peft import PeftModel

    _check_base(folder, resolved)
    digest = hashlib.sha256((Path(folder) / ADAPTER_WEIGHTS_NAME).read_bytes()).hexdigest()[:16]
    return PeftModel.from_pretrained(model, str(folder), is_trainable=False), digest


def _bar(total: int, progress: bool, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex")
