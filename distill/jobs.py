"""The two jobs behind `fusionlog label` and `fusionlog llm-tune`, callable from Python too.

The CLI modules only parse arguments into these dataclasses; everything else happens here, so the
pipeline (and the lead's rounds) can call the same functions.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from distill.calibration import CALIBRATION_NAME, PlattCalibration
from distill.config import BackendConfig, LabelConfig, TuneConfig
from fusionlog.config import SessionRule
from fusionlog.data.raw import RawSpec
from fusionlog.errors import ConfigError
from fusionlog.io import atomic_write_json, atomic_write_text, check_out_dir, load_npy

logger = logging.getLogger(__name__)

#: Labelled session sets, one per system, used as sources (the target's own system is left out).
DEFAULT_SOURCES: tuple[str, ...] = ("hdfs", "openstack", "hadoop", "bgl")
VERDICTS_NAME = "verdicts.jsonl"
SUMMARY_NAME = "summary.json"


@dataclass(frozen=True)
class LabelJob:
    target: str
    backend: BackendConfig = field(default_factory=BackendConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    out_dir: str = "runs/label"
    sources: tuple[str, ...] | None = None  # None: DEFAULT_SOURCES minus the target's system
    balanced_examples: bool = True
    whole_dataset: bool = False  # default: the adaptation pool only (as the pipeline sees it)
    data_dir: str | None = None
    cache_path: str | None = None  # None: <cache>/llm_verdicts.sqlite; "" disables the cache
    calibration: str | None = None  # a calibration.json; None: the adapter's, if any
    small_probs: str | None = None  # .npy of small-model P(anomalous), one per labelled session
    progress: bool = True
    spec: RawSpec | None = None  # a user's raw logs (`fusionlog.commands._common.spec_from_args`)
    rule: SessionRule | None = None  # a session rule replacing the dataset's own


def default_sources(target: str, sources: tuple[str, ...] | None) -> list[str]:
    from fusionlog.data import system_of

    if sources:
        own = system_of(target)
        clash = [s for s in sources if system_of(s) == own]
        if clash:
            raise ConfigError(f"sources {clash} are the target's own system ({own}); sources must be other systems")
        return list(sources)
    own = system_of(target)
    return [s for s in DEFAULT_SOURCES if system_of(s) != own]


def run_label(job: LabelJob) -> dict:
    """Label the target's sessions (labels hidden from the labeller) and write verdicts + summary."""
    from distill.backends import make_backend
    from distill.cache import VerdictCache
    from distill.labeller import Labeller
    from distill.prompts import load_prompt
    from distill.quality import label_quality
    from fusionlog.data import hide_labels, load_dataset, split_sessions

    check_out_dir(job.out_dir, "--out")  # before the LLM's work, not after it
    t0 = time.perf_counter()
    prompt = load_prompt(job.label.prompt)  # validate before anything slow
    need_vectors = job.label.k_examples > 0 and "examples" in prompt.variables
    src_names = default_sources(job.spec.system if job.spec else job.target, job.sources) if need_vectors else []
    if need_vectors:
        from fusionlog.prepare import prepare

        target_prep = prepare(job.target, job.data_dir, rule=job.rule, spec=job.spec, progress=job.progress)
        dataset, target_vectors = target_prep.dataset, target_prep.vectors
    else:
        dataset = load_dataset(job.target, job.data_dir, rule=job.rule, spec=job.spec, progress=job.progress)
        target_vectors = None
    if job.whole_dataset:
        chosen, split_info = list(dataset.sessions), {"method": "whole dataset"}
    elif not dataset.labelled:  # as `fuse` does: with no labels there is no test part to keep apart
        chosen, split_info = list(dataset.sessions), {"method": "none (unlabelled target: every session)"}
    else:
        split = split_sessions(dataset)
        chosen, split_info = split.pool, dict(split.summary(), part="adaptation pool")
    truth = {s.key: int(s.label) for s in chosen if s.label is not None}
    sessions = hide_labels(chosen)  # the labeller never sees a target label

    examples_for = None
    if need_vectors:
        from distill.retrieval import router_examples
        from fusionlog.prepare import prepare
        from router import SemanticRouter

        router = SemanticRouter().fit([prepare(name, job.data_dir, progress=job.progress) for name in src_names])
        route = router.split(dataset, target_vectors, sessions=sessions, idf_sessions=sessions)
        examples_for = router_examples(router, route, sessions, job.label.k_examples, job.balanced_examples)

    small = load_small_probs(job.small_probs, len(sessions)) if job.small_probs else None
    calibration = _calibration(job)
    backend = make_backend(job.backend)
    cache = None if job.cache_path == "" else VerdictCache(Path(job.cache_path) if job.cache_path else None)
    try:
        labeller = Labeller(backend, prompt, job.label, cache, examples_for, calibration, progress=job.progress)
        run = labeller.label(sessions, dataset.templates, dataset.system, small)
    finally:
        if cache is not None:
            cache.close()
        backend.close()

    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / VERDICTS_NAME, "".join(json.dumps(v.to_dict()) + "\n" for v in run.verdicts))
    summary = {
        "target": job.target,
        "system": dataset.system,
        "split": split_info,
        "sources": src_names,
        "backend": job.backend.backend,
        "model": getattr(backend, "model_id", job.backend.model),
        "load_seconds": round(float(getattr(backend, "load_seconds", 0.0)), 1),
        "prompt": {"name": prompt.name, "path": str(prompt.path), "sha256": prompt.sha256},
        "calibration": asdict(calibration) if calibration else None,
        "stats": run.stats.to_dict(),
        "quality": label_quality(run.verdicts, truth) if truth else None,
        "quality_note": "hidden target labels, used for this report only" if truth else "target unlabelled",
        "job": _jsonable(asdict(job)),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / SUMMARY_NAME, summary)
    return summary


def _calibration(job: LabelJob) -> PlattCalibration | None:
    if job.calibration:
        return PlattCalibration.load(Path(job.calibration))
    if job.backend.adapter and (Path(job.backend.adapter) / CALIBRATION_NAME).is_file():
        return PlattCalibration.load(Path(job.backend.adapter) / CALIBRATION_NAME)
    return None


def load_small_probs(path: str, n: int) -> np.ndarray:
    arr = load_npy(Path(path)).astype(float)
    if arr.shape != (n,):
        raise ConfigError(f"{path}: shape {arr.shape}; expected ({n},), one probability per session")
    return arr


@dataclass(frozen=True)
class TuneJob:
    sources: tuple[str, ...]
    model: str
    out_dir: str
    tune: TuneConfig = field(default_factory=TuneConfig)
    prompt: str = "label_session"
    data_dir: str | None = None
    calibrate_only: bool = False
    adapter: str | None = None  # calibrate-only: calibrate this adapter (written into its folder)
    progress: bool = True


def run_tune(job: TuneJob) -> dict:
    """LoRA + calibration from labelled sources (or calibration alone); never reads a target."""
    from distill.lora import calibrate, tune
    from distill.prompts import load_prompt
    from fusionlog.data import load_dataset

    if not job.sources:
        raise ConfigError("llm-tune: give --sources (labelled datasets of other systems)")
    if where := (job.adapter if job.calibrate_only and job.adapter else job.out_dir):
        check_out_dir(where, "--out")
    prompt = load_prompt(job.prompt)
    datasets = [load_dataset(name, job.data_dir, progress=job.progress) for name in job.sources]
    out = Path(job.out_dir)
    if not job.calibrate_only:
        return tune(job.model, prompt, datasets, out, job.tune, progress=job.progress)
    from distill.backends.transformers_local import TransformersBackend

    backend = TransformersBackend(job.model, adapter=job.adapter)
    cal, quality = calibrate(backend, prompt, datasets, job.tune)
    out = Path(job.adapter) if job.adapter else out
    out.mkdir(parents=True, exist_ok=True)
    cal.save(out / CALIBRATION_NAME)
    meta = {"base_identity": backend.model_id, "sources": list(job.sources), "calibration": asdict(cal),
            "heldout_source_quality": quality, "prompt_sha256": prompt.sha256}
    atomic_write_json(out / "calibration_meta.json", meta)
    return meta


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
