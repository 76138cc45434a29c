"""`fuse(cfg)`: the main job. Data → parse → embed → general path → route → LLM rounds → artifact.

This is the one module that composes the stages (and the one allowed to import `router` and
`distill`, lazily). `scripts/fuse.py` and `fusionlog fuse` only build a `FuseConfig` and call `fuse`.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from fusionlog.config import SessionRule, config_from_dict, config_to_dict, register_config_type
from fusionlog.constants import DRAIN_STATE_NAME
from fusionlog.data.named_formats import resolve_log_format
from fusionlog.errors import ConfigError
from fusionlog.findings import findings_markdown, pool_findings
from fusionlog.io import atomic_write_json, atomic_write_text, check_out_dir
from fusionlog.threshold import DEFAULT_THRESHOLD_RULE, THRESHOLD_RULES

logger = logging.getLogger(__name__)

#: Labelled session sets, one per system, the default sources (the target's own system is left out).
DEFAULT_SOURCES: tuple[str, ...] = ("hdfs", "openstack", "hadoop", "bgl")
SERVING_NAME = "serving.json"
NEAREST_NAME = "nearest_source.json"
ROUTER_DIR = "router"
FUSE_CONFIG_NAME = "fuse_config.json"


def _distill_config():
    from distill.rounds import DistillConfig

    return DistillConfig()


@register_config_type
@dataclass(frozen=True)
class FuseConfig:
    """Everything `fuse` needs; `scripts/fuse.py` and `fusionlog fuse` fill it from flags."""

    target: str
    sources: tuple[str, ...] = ()
    llm: str = field(default="qwen2.5-coder-0.5b", metadata={"help": "LLM alias, .gguf file, folder or model id"})
    llm_backend: str = field(default="auto", metadata={"help": "auto, transformers, vllm or openai"})
    llm_base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "openai backend endpoint"})
    llm_adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder (transformers backend)"})
    llm_lora: bool = field(default=False, metadata={
        "help": "train a LoRA adapter on the LLM each round from agreed labels (transformers backend; GPU advised)"})
    k_examples: int = field(default=2, metadata={"help": "retrieved source sessions per prompt"})
    out: str = field(default="", metadata={"help": "output folder (default runs/<target>)"})
    data_dir: str | None = None
    seed: int = 0
    resume: bool = False
    epochs: int | None = field(default=None, metadata={"help": "override the general path's max epochs"})
    steps_per_epoch: int | None = None
    template_prior: bool = field(default=False, metadata={
        "help": "weigh the target's surprise by what the sources' labelled templates say (fusionlog.template_prior)"})
    device: str = "cpu"
    threshold: str = field(default=DEFAULT_THRESHOLD_RULE, metadata={
        "help": "label-free threshold rule (fusionlog.threshold); another one where every pool session is unusual"})
    pool_fraction: float = 0.6
    rule: SessionRule | None = None
    log_format: str | None = None
    progress: bool = True
    distill: object = field(default_factory=_distill_config)

    def __post_init__(self) -> None:
        if not self.target:
            raise ConfigError("FuseConfig.target is empty: give a dataset name, a .jsonl file or a raw log")
        if self.threshold not in THRESHOLD_RULES:
            raise ConfigError(f"FuseConfig.threshold={self.threshold!r}: one of {', '.join(THRESHOLD_RULES)}")
        if self.llm_backend not in ("auto", "transformers", "vllm", "openai"):
            raise ConfigError(f"FuseConfig.llm_backend={self.llm_backend!r}: auto, transformers, vllm or openai")
        if self.llm_lora and resolve_backend(self.llm, self.llm_backend) != "transformers":
            raise ConfigError(
                f"--llm-lora (FuseConfig.llm_lora) trains and loads LoRA adapters with the transformers backend "
                f"only; --llm-backend {resolve_backend(self.llm, self.llm_backend)} (--llm {self.llm}) cannot take "
                f"one. Use --llm-backend transformers with local weights, or drop --llm-lora")
        if isinstance(self.distill, dict):
            from distill.rounds import DistillConfig

            object.__setattr__(self, "distill", config_from_dict(DistillConfig, self.distill))
        if self.llm_lora and getattr(self.distill, "teacher", "session") == "template":
            raise ConfigError("--llm-lora trains the LLM on session prompts; --teacher template asks about "
                              "templates. Use one of them")

    @property
    def out_dir(self) -> Path:
        from fusionlog.data.logfiles import safe_name

        return Path(self.out or f"runs/{safe_name(Path(self.target).name.split('.')[0], 'target')}")


def resolve_backend(llm: str, backend: str) -> str:
    """auto: GPU-only aliases (qwen2.5-7b) go to vLLM, local weights to transformers."""
    if backend != "auto":
        return backend
    from distill.models import ALIASES

    alias = ALIASES.get(llm.lower())
    if alias is not None and alias.source is None:
        return "vllm"
    return "transformers"


def preflight_llm(llm: str, backend: str) -> None:
    """Fail now, with the install line, if the LLM cannot load; not after minutes of training.

    Local weights are resolved (chunked aliases are assembled and checksummed once, which the first
    call would do anyway); vLLM must be importable. An OpenAI-compatible server is only reachable
    at call time, and a server that goes away is handled there (retries, then a clear error).
    """
    kind = resolve_backend(llm, backend)
    if kind == "transformers":
        from distill.models import resolve_model

        resolve_model(llm, local=True)
    elif kind == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            from fusionlog.errors import LLMError

            raise LLMError(f"--llm {llm} runs on vLLM (--llm-backend {backend}), which is not installed here; on a "
                           f"GPU machine `pip install vllm`, or serve the model and use --llm-backend openai")


def default_sources(target_system: str, given: tuple[str, ...]) -> list[str]:
    from fusionlog.data import system_of

    if given:
        clash = [s for s in given if system_of(s) == target_system]
        if clash:
            raise ConfigError(f"sources {clash} are the target's own system ({target_system}); use other systems")
        return list(given)
    return [s for s in DEFAULT_SOURCES if system_of(s) != target_system]


@dataclass
class FuseResult:
    out_dir: Path
    report: dict
    detector: object = None


def fuse(cfg: FuseConfig, spec=None, backend=None, cache_path: Path | None = None) -> FuseResult:
    """Run the main job; returns the artifact folder and the report (also written to disk).

    `backend` replaces the LLM named in `cfg` (an object with the `distill.backends.LLMBackend` API);
    `cache_path` moves the verdict cache (default: the user cache).
    """
    from distill.rounds import RoundContext, run_rounds
    from fusionlog.data import check_pool_size, hide_labels, split_sessions
    from fusionlog.detector import Detector, SystemSessions
    from fusionlog.prepare import prepare
    from fusionlog.training import TrainConfig
    from router import SemanticRouter

    if cfg.llm_lora and backend is not None:
        raise ConfigError("--llm-lora trains the LLM the pipeline loads itself; it cannot adapt a backend passed in")
    if backend is None and not cfg.resume and getattr(cfg.distill, "rounds", 0) > 0:
        preflight_llm(cfg.llm, cfg.llm_backend)  # a resumed run may need no LLM at all: it loads lazily
    check_out_dir(cfg.out_dir, "--out")  # before any work: a folder it cannot write is said at once
    check_run_folder(cfg)
    t_start = time.perf_counter()
    stage = _Stages(cfg.progress)

    with stage("prepare target"):
        target = prepare(cfg.target, cfg.data_dir, rule=cfg.rule, spec=spec, progress=cfg.progress)
    ds = target.dataset
    labelled = ds.labelled
    if labelled:
        split = split_sessions(ds, cfg.pool_fraction, cfg.seed)
        pool, test, split_method = hide_labels(split.pool), split.test, split.method
    else:
        pool, test, split_method = hide_labels(ds.sessions), [], "none (unlabelled target: all sessions adapt)"
    check_pool_size(len(pool), len(ds.sessions), cfg.target)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / FUSE_CONFIG_NAME, _jsonable(config_to_dict(cfg)))
    src_names = default_sources(ds.system, cfg.sources)
    with stage(f"prepare sources {','.join(src_names)}"):
        sources = [prepare(name, cfg.data_dir, progress=cfg.progress) for name in src_names]
    src_ss = [SystemSessions.from_prepared(p) for p in sources]
    tgt_ss = SystemSessions.from_prepared(target, pool)

    train_cfg = TrainConfig(seed=cfg.seed, device=cfg.device, template_prior=cfg.template_prior)
    overrides = {k: v for k, v in (("epochs", cfg.epochs), ("steps_per_epoch", cfg.steps_per_epoch)) if v}
    train_cfg = replace(train_cfg, **overrides)
    rounds_dir = out / "rounds"
    from distill.rounds import last_complete_round

    resumed = cfg.resume and last_complete_round(rounds_dir) is not None
    if resumed:
        detector = Detector.from_pretrained(rounds_dir / f"round_{last_complete_round(rounds_dir)[0]}")
    else:
        with stage("round 0: general path (meta-learning + domain-adversarial)"):
            detector = Detector(train_config=train_cfg, threshold_rule=cfg.threshold).fit(src_ss, tgt_ss)

    with stage("route"):
        router = SemanticRouter().fit(sources)
        route = router.split(ds, target.vectors, sessions=pool, idf_sessions=pool)
    labeller = LazyLabeller(cfg, router, route, pool, ds, backend, cache_path, sources=src_ss)

    ctx = RoundContext(
        detector=detector, sources=src_ss, pool=pool, general_mask=np.asarray(route.general_mask, dtype=bool),
        label_fn=labeller, rethreshold=lambda det: pool_rethreshold(det, pool),
        evaluate=lambda det: heldout_metrics(det, test),
        load_detector=Detector.from_pretrained, llm_adapter=labeller if cfg.llm_lora else None,
        probe_fn=labeller.probe, have_weights=labeller.have_weights,
    )
    with stage(f"distillation rounds (LLM {cfg.llm})"):
        detector, history = run_rounds(ctx, cfg.distill, out, resume=cfg.resume,
                                       on_round=lambda r: _print_round(r, cfg.progress))
    labeller.close()

    with stage("write artifact"):
        detector.save_pretrained(out)
        router.save(out / ROUTER_DIR)
        if ds.store is not None:
            ds.store.save(out / DRAIN_STATE_NAME)
        rule = cfg.rule or (spec.rule if spec is not None else _registry_rule(cfg.target))
        log_format = spec.log_format if spec is not None else (  # a spec's format is resolved: never a name
            resolve_log_format(cfg.log_format)[0] if cfg.log_format else _registry_format(cfg.target))
        atomic_write_json(out / NEAREST_NAME, {"nearest": _nearest_sources(route, len(ds.templates))})
        atomic_write_json(out / SERVING_NAME, {
            "system": ds.system,
            "parser": "drain" if ds.store is not None else "templates",
            "rule": config_to_dict(rule) if rule is not None else None,
            "log_format": log_format,
            **_line_reading(spec if spec is not None else _registry_spec(cfg.target)),
        })
    with stage("score the target's own sessions"):
        findings = pool_findings(out, pool)
    final = history[-1]
    adapters = [h.llm_lora["adapter"] for h in history if h.llm_lora and h.llm_lora.get("adapter")]
    report = {
        "target": cfg.target,
        "system": ds.system,
        "sources": src_names,
        "llm": cfg.llm,
        "llm_backend": resolve_backend(cfg.llm, cfg.llm_backend),
        "llm_lora": {"enabled": bool(cfg.llm_lora), "final_adapter": adapters[-1] if adapters else None},
        "split": {"method": split_method, "pool_sessions": len(pool), "test_sessions": len(test),
                  "test_anomalies": int(sum(1 for s in test if s.label == 1))},
        "router": route.summary(),
        "reference": {"sessions": int(detector.stats_.n_sessions), "pool_sessions": len(pool),
                      "trimmed": bool(detector.model_.config.trim_reference)},
        "threshold": {"value": float(detector.threshold_), "rule": detector.threshold_info_.rule,
                      "source": detector.threshold_info_.source, "details": detector.threshold_info_.details},
        "template_prior": _prior_summary(detector),
        "rounds": [asdict(h) for h in history],
        "test": final.test,
        "llm_calls": int(sum(h.llm_calls for h in history)),
        "llm_tokens": int(sum(h.llm_tokens for h in history)),
        "llm_labelled_sequences": int(sum(h.llm_labelled_sequences for h in history)),
        "llm_calls_share_of_target_sessions": round(sum(h.llm_calls for h in history) / max(len(ds.sessions), 1), 4),
        "target_sessions": len(ds.sessions),
        "findings": findings,
        "resumed": bool(resumed),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "labels_note": ("target labels used only to score the held-out test part" if labelled
                        else "target unlabelled: no metrics; the artifact adapted to all of it"),
    }
    atomic_write_json(out / "report.json", _jsonable(report))
    atomic_write_text(out / "report.md", report_markdown(report))
    _plot_rounds(report, out)
    _print_summary(report, cfg.progress)
    return FuseResult(out, report, detector)


def _reference_line(ref: dict) -> str:
    """Why say it: rarity is counted over these sessions, and an SRE reading a flagged pool session's
    explanation should know the pool's own outliers were left out of the counts."""
    if not ref["trimmed"]:
        return f"- reference: all {ref['pool_sessions']} pool sessions (untrimmed)"
    if ref["sessions"] == ref["pool_sessions"]:
        return (f"- reference: all {ref['pool_sessions']} pool sessions (none within 1 unit of surprise of the "
                f"others to trim to, or none above it)")
    return (f"- reference: {ref['sessions']} of {ref['pool_sessions']} pool sessions, those within 1 unit of "
            f"surprise of the rest; the {ref['pool_sessions'] - ref['sessions']} others are left out of the counts")


def _prior_summary(detector) -> dict | None:
    """What the template prior measured (None: switched off, or too few labelled source systems)."""
    prior = detector.prior_
    if prior is None:
        return None
    return {"trust": round(prior.trust, 4), "strength": prior.strength,
            "held_out_auc": {k: round(v, 4) for k, v in prior.held_out_auc.items()}, "templates": prior.templates}


def heldout_metrics(det, test) -> dict | None:
    """Held-out metrics of one round's detector: labels only score it, never reach training."""
    if not test:
        return None
    from eval.metrics import binary_metrics

    labels = np.array([s.label for s in test], dtype=np.int64)
    scores = det.decision_function(test)
    m = binary_metrics(labels, scores, det.threshold_)
    out = {k: round(float(v), 4) if np.isfinite(v) else None for k, v in m.items()}
    out["flagged"] = round(float(np.mean(scores > det.threshold_)), 4)
    return out | one_class_gaps(labels, out)


def one_class_gaps(labels: np.ndarray, metrics: dict) -> dict:
    """Nulls for the figures a one-class test part cannot define (e.g. Thunderbird's 2k lines hold no anomaly).

    Why: 0.000 reads as "missed every anomaly" when there was none to miss; JSON null (never NaN, which
    strict JSON readers refuse) plus a note says what was measured: with no anomaly, `flagged` is the
    false-alarm rate.
    """
    anomalous = int(labels.sum())
    if 0 < anomalous < len(labels):
        return {}
    gaps: dict = {"roc_auc": None, "pr_auc": None}
    if anomalous == 0:
        gaps |= {"recall": None, "f1": None, "precision": 0.0 if metrics.get("flagged") else None,
                 "note": "no anomalous session in the test part: recall and F1 are undefined; flagged = false alarms"}
    else:
        gaps["note"] = "every test session is anomalous: ROC-AUC and PR-AUC are undefined"
    return gaps


def pool_rethreshold(det, pool) -> None:
    """Re-apply the detector's label-free rule to the fine-tuned model's pool scores.

    Rules that read held-out source data (`source-f1`) keep round 0's threshold. The pool is scored as
    `Detector.fit` scored it (one score per distinct input, leave-one-out), so a rule means the same in
    every round.
    """
    from fusionlog.threshold import POOL_RULES

    if det.threshold_rule in POOL_RULES:
        det.threshold_info_ = det.pool_threshold(*det.pool_inputs(pool))
        det.threshold_ = float(det.threshold_info_.value)


class LazyLabeller:
    """Builds the LLM backend on first use: a resumed or cached run may never need to load it.

    With `--llm-lora` it is also the rounds' `LLMAdapterHooks`: `train` renders agreed labels with the
    labeller's own prompt and trains an adapter; `use` drops the backend so the next call rebuilds it
    with that adapter (whose weights' hash enters the model id, hence every cache key).
    """

    def __init__(self, cfg: FuseConfig, router, route, pool, ds, backend=None, cache_path=None,
                 sources=()) -> None:
        self.cfg, self.router, self.route, self.pool, self.ds = cfg, router, route, pool, ds
        self._main = self._recheck = self._cache = self._template = None
        self._teachers: dict[str, object] = {}  # system -> distill.template_teacher.TemplateTeacher
        self._backend = backend
        self._owns_backend = backend is None
        self._cache_path = cache_path
        self._examples = None
        self._sources = list(sources)  # labelled SystemSessions, for class balance of LoRA examples
        self._adapter: Path | None = Path(cfg.llm_adapter) if cfg.llm_adapter else None

    @property
    def adapter(self) -> Path | None:
        """The adapter the LLM labels with now (None: the base model)."""
        return self._adapter

    def _build(self) -> None:
        from distill.backends import make_backend
        from distill.cache import VerdictCache
        from distill.config import BackendConfig
        from distill.labeller import Labeller
        from distill.prompts import load_prompt

        if self._backend is None:
            backend_name = resolve_backend(self.cfg.llm, self.cfg.llm_backend)
            self._backend = make_backend(BackendConfig(backend=backend_name, model=self.cfg.llm,
                                                       adapter=str(self._adapter) if self._adapter else None,
                                                       device=self.cfg.device, base_url=self.cfg.llm_base_url))
        if self._cache is None:
            self._cache = VerdictCache(self._cache_path)
        lc = self._label_config()
        examples = self.examples_for
        self._main = Labeller(self._backend, load_prompt("label_session"), lc, self._cache, examples,
                              progress=self.cfg.progress)
        self._template = Labeller(self._backend, load_prompt("label_template"),
                                  replace(lc, prompt="label_template", k_examples=0), self._cache, None,
                                  progress=self.cfg.progress)
        self._recheck = Labeller(self._backend, load_prompt("recheck_disagreement"),
                                 replace(lc, prompt="recheck_disagreement"), self._cache, examples,
                                 progress=self.cfg.progress)

    def _label_config(self):
        from distill.config import LabelConfig

        return LabelConfig(k_examples=self.cfg.k_examples)

    def use(self, adapter: Path | None) -> None:
        """Label with `adapter` from the next call on (None: back to the base / `--llm-adapter`)."""
        if not self._owns_backend:
            raise ConfigError("--llm-lora: cannot switch the adapter of a backend passed in to fuse()")
        adapter = Path(adapter) if adapter is not None else (Path(self.cfg.llm_adapter) if self.cfg.llm_adapter
                                                             else None)
        if adapter != self._adapter:
            self._adapter = adapter
            self._release_backend()

    def _release_backend(self) -> None:
        """Free the LLM (training loads its own copy; the next label call rebuilds it)."""
        if self._backend is not None and self._owns_backend:
            self._backend.close()
            self._backend = None
            self._main = self._recheck = self._template = None

    def train(self, agreed, out_dir: Path) -> dict:
        """LoRA on the agreed labels (+ source sessions of the rarer class), rendered as the labeller asks."""
        from distill.lora import tune_on_examples
        from distill.prompts import load_prompt

        lora = self.cfg.distill.lora
        prompt = load_prompt("label_session")
        examples = [(self._messages(prompt, a.session, self.ds.templates, self.ds.system), int(a.label))
                    for a in agreed]
        counts = [sum(1 for a in agreed if a.label == c) for c in (0, 1)]
        extra = balance_from_sources(self._sources, counts, lora.seed) if lora.balance_with_sources else []
        examples += [(self._messages(prompt, s, src.templates or [], src.system), int(s.label)) for s, src in extra]
        random.Random(lora.seed).shuffle(examples)
        source_counts = {"normal": sum(1 for s, _ in extra if s.label == 0),
                         "anomalous": sum(1 for s, _ in extra if s.label == 1)}
        info = {"kind": "round", "target_system": self.ds.system, "prompt": prompt.name,
                "prompt_sha256": prompt.sha256, "k_examples": self.cfg.k_examples,
                "agreed": {"normal": counts[0], "anomalous": counts[1]}, "source_examples": source_counts}
        self._release_backend()  # one model in memory at a time
        summary = tune_on_examples(self.cfg.llm, examples, Path(out_dir), lora, info=info,
                                   init_adapter=Path(self.cfg.llm_adapter) if self.cfg.llm_adapter else None,
                                   device=self.cfg.device, progress=self.cfg.progress)
        return {**summary, "source_examples": source_counts}

    def _messages(self, prompt, session, templates, system):
        """The labeller's own rendering (few-shot examples exist only for pool sessions: none for sources)."""
        from distill.labeller import render_messages

        lc = self._label_config()
        examples = None
        if "examples" in prompt.variables and lc.k_examples:
            examples = self.examples_for(session)[: lc.k_examples]
        return render_messages(prompt, lc, session, templates, system, examples)

    def probe(self, per_class: int) -> tuple[list[float], list[int], dict]:
        """The LLM's P(anomalous) on `per_class` labelled source sequences of each class (`distill.rounds.probe_llm`).

        Rendered without few-shot examples (the router would retrieve the probe itself, label included) and
        with labels hidden; one labeller call per source system, since each has its own templates.
        """
        if self.template_mode:
            return self._probe_templates(per_class)
        from distill.labeller import Labeller, add_counts
        from distill.prompts import load_prompt

        seed = self.cfg.seed
        picks = [p for label in (0, 1) for p in distinct_source_sessions(self._sources, label, per_class, seed)]
        if not picks:
            return [], [], {}
        if self._main is None:
            self._build()
        if self.template_mode:
            answer = self._template_answers
        else:
            labeller = Labeller(self._backend, load_prompt("label_session"),
                                replace(self._label_config(), k_examples=0), self._cache, None,
                                progress=self.cfg.progress)

            def answer(src, hidden):
                run = labeller.label(hidden, src.templates or [], src.system)
                return run.sequence_probs(hidden), run.stats.to_dict()

        probs: list[float] = []
        labels: list[int] = []
        totals: dict[str, float] = {}
        for src in {id(src): src for _, src in picks}.values():
            mine = [s for s, owner in picks if owner is src]
            got, stats = answer(src, [replace(s, label=None) for s in mine])
            for s in mine:
                if tuple(s.event_ids) in got:
                    probs.append(got[tuple(s.event_ids)])
                    labels.append(int(s.label))
            add_counts(totals, stats)
        return probs, labels, totals

    def _probe_templates(self, per_class: int) -> tuple[list[float], list[int], dict]:
        """Template teacher: its verdicts on up to `per_class` anomaly and normal templates of each source
        (`labelled_templates`, seeded pick), each read against its own system's everyday templates exactly as
        the target's surprise weights are (one-template sequences)."""
        from distill.labeller import add_counts
        from distill.template_teacher import labelled_templates
        from fusionlog.types import Session

        probs: list[float] = []
        labels: list[int] = []
        totals: dict[str, float] = {}
        for i, src in enumerate(self._sources):
            pos, neg = labelled_templates(src.sessions)
            rng = random.Random(self.cfg.seed + i)
            picks = [(e, 1) for e in rng.sample(pos, min(per_class, len(pos)))]
            picks += [(e, 0) for e in rng.sample(neg, min(per_class, len(neg)))]
            if not picks:
                continue
            teacher = self.teacher_for(src.system, src.templates or [], src.sessions)
            got, stats = teacher.probs([Session(src.system, f"template:{e}", [e], None) for e, _ in picks])
            add_counts(totals, stats)
            for e, label in picks:
                if (e,) in got:
                    probs.append(got[(e,)])
                    labels.append(label)
        return probs, labels, totals

    def examples_for(self, session):
        """Nearest labelled source sessions through the router's FAISS index, half anomalous, half normal."""
        if self._examples is None:
            from distill.retrieval import router_examples

            self._examples = router_examples(self.router, self.route, self.pool, self.cfg.k_examples)
        return self._examples(session)

    @property
    def template_mode(self) -> bool:
        return self.cfg.distill.teacher == "template"

    def teacher_for(self, system: str, templates, reference):
        """The system's template teacher (built once: its verdicts and everyday templates persist)."""
        from distill.template_teacher import TemplateTeacher

        if self._main is None:
            self._build()
        t = self._teachers.get(system)
        if t is None or t.labeller is not self._template:
            t = self._teachers[system] = TemplateTeacher(self._template, templates, system, reference,
                                                         self.cfg.distill.template)
        return t

    def _template_answers(self, src, hidden) -> tuple[dict[tuple, float], dict]:
        """A source's probe read exactly as the target's labels are: against its own everyday templates."""
        return self.teacher_for(src.system, src.templates or [], src.sessions).probs(hidden)

    def have_weights(self, trust: float, so_far: np.ndarray) -> np.ndarray | None:
        """Template teacher: the target's surprise weights with its verdicts so far (None: nothing asked yet
        in this process, so the detector keeps the weights it has, e.g. from the checkpoint it resumed)."""
        teacher = self._teachers.get(self.ds.system) if self.template_mode else None
        if teacher is None or not teacher.logits:
            return None
        return teacher.have_weights(so_far, trust)

    def __call__(self, sessions, probs, recheck):
        if self.template_mode:
            return self.teacher_for(self.ds.system, self.ds.templates, self.pool).probs(sessions)
        if self._main is None:
            self._build()
        labeller = self._recheck if recheck else self._main
        run = labeller.label(sessions, self.ds.templates, self.ds.system, small_probs=np.asarray(probs))
        return run.sequence_probs(sessions), run.stats.to_dict()

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self._backend is not None and self._owns_backend:
            self._backend.close()


def distinct_source_sessions(sources, label: int, n: int, seed: int = 0) -> list[tuple[object, object]]:
    """Up to `n` labelled source sessions of class `label`, one per distinct (system, sequence), seeded pick.

    Returns (session, its SystemSessions) pairs, so a caller can render each with its own templates.
    """
    if n <= 0:
        return []
    seen: set[tuple] = set()
    pool = []
    for src in sources:
        for s in src.sessions:
            key = (src.system, tuple(s.event_ids))
            if s.label == label and key not in seen:
                seen.add(key)
                pool.append((s, src))
    random.Random(seed + label).shuffle(pool)
    return pool[:n]


def balance_from_sources(sources, counts: list[int], seed: int = 0) -> list[tuple[object, object]]:
    """Labelled source sessions (distinct sequences, seeded pick) that bring each class up to the larger count.

    Why: agreed labels on a new system are mostly "normal"; an adapter trained on one class only
    learns to say that word. Returns (session, its SystemSessions) pairs; empty when already balanced.
    """
    target = max(counts)
    return [pair for label in (0, 1) for pair in distinct_source_sessions(sources, label, target - counts[label], seed)]


def _nearest_sources(route, n_templates: int) -> list[dict | None]:
    """Per target template, its nearest source template (for explanations at detection time)."""
    out: list[dict | None] = []
    for t in range(n_templates):
        try:
            m = route.template_match(t)
        except (IndexError, KeyError):
            out.append(None)
            continue
        if m.nearest is None or m.similarity is None:
            out.append(None)
        else:
            out.append({"text": m.nearest.text, "system": m.nearest.system, "similarity": round(m.similarity, 4)})
    return out


def _registry_rule(target: str) -> SessionRule | None:
    from fusionlog.data.registry import raw_form

    form = raw_form(target)
    return form[1] if form else None


def _registry_spec(target: str):
    from fusionlog.data.registry import dataset_info, dataset_names

    return dataset_info(target).spec if target.lower() in dataset_names() else None


def _line_reading(spec) -> dict[str, str]:
    """serving.json's `line_filter` and `strip`: detection must drop continuation lines and cut the same
    content prefix as training did, or every line's template differs from the one learned."""
    if spec is None:
        return {"line_filter": "", "strip": ""}
    return {"line_filter": spec.line_filter, "strip": spec.strip}


def _registry_format(target: str) -> str:
    from fusionlog.data.registry import raw_form

    form = raw_form(target)
    return form[0] if form else "<Content>"


class _Stages:
    """Logs each stage with its wall time (the long inner loops have their own progress bars)."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress

    def __call__(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def cm():
            t0 = time.perf_counter()
            logger.info("%s ...", name)
            yield
            logger.info("%s done in %.1fs", name, time.perf_counter() - t0)

        return cm()


#: What a run's artifact depends on: `--resume` into a folder whose fuse_config.json differs in any of them would
#: mix two runs (another target's rounds under this target's serving.json).
RESUME_KEYS = ("target", "sources", "seed", "data_dir", "rule", "log_format", "pool_fraction", "template_prior",
               "threshold", "epochs", "steps_per_epoch")


def check_run_folder(cfg: FuseConfig) -> None:
    """Refuse an `--out` that holds files but no earlier run (fuse_config.json), and a `--resume` whose earlier run
    had other settings. Why: fuse writes config.json, report.md, ... into the folder, and replaced a user's own
    files of those names without a word (or wrote into the folder of the logs it read); `--resume` continued
    another target's rounds and left a model with one target's templates and the other's serving.json."""
    out = cfg.out_dir
    if not out.is_dir() or not any(out.iterdir()):
        return
    saved_path = out / FUSE_CONFIG_NAME
    if not saved_path.is_file():
        raise ConfigError(f"--out {out}: the folder holds files but no FusionLog run ({FUSE_CONFIG_NAME}); fuse "
                          "would overwrite files of its own names there: name an empty or a new folder")
    if not cfg.resume:
        return  # a re-fuse into its own folder (a running serve reloads it)
    try:
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: {saved_path} cannot be read ({exc}); run without --resume") from None
    now = _jsonable(config_to_dict(cfg))
    differ = [k for k in RESUME_KEYS if isinstance(saved, dict) and saved.get(k) != now.get(k)]
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} there, {now.get(k)!r} now" for k in differ[:3])
        raise ConfigError(f"--resume {out}: that run had other settings ({shown}); resume it with them, or run "
                          "without --resume (or into another --out) to start afresh")


def _print_round(rec, progress: bool) -> None:
    if not progress:
        return
    test = rec.test or {}
    print(f"round {rec.round}: llm_calls={rec.llm_calls} labelled={rec.llm_labelled_sequences} "
          f"rechecked={rec.rechecked_sequences} changed={rec.labels_changed} "
          f"test_f1={test.get('f1') if test.get('f1') is not None else '-'} ({rec.seconds}s)", flush=True)


def report_markdown(report: dict) -> str:
    lines = [
        f"# FusionLog run: {report['target']}",
        "",
        f"- sources: {', '.join(report['sources'])}",
        f"- LLM: {report['llm']} ({report['llm_backend']}), calls {report['llm_calls']} "
        f"({100 * report['llm_calls_share_of_target_sessions']:.2f}% of {report['target_sessions']} sessions)",
        f"- split: {report['split']['method']}; pool {report['split']['pool_sessions']}, "
        f"test {report['split']['test_sessions']} ({report['split']['test_anomalies']} anomalous)",
        f"- router: {report['router'].get('general', '?')} general / {report['router'].get('proprietary', '?')} "
        f"proprietary pool sessions",
        *([_reference_line(report["reference"])] if report.get("reference") else []),
        f"- threshold: {report['threshold']['value']:.4f} ({report['threshold']['rule']}, "
        f"{report['threshold']['source']})",
        f"- wall time: {report['wall_seconds']} s",
        *([f"- LLM LoRA (--llm-lora): final adapter {report['llm_lora']['final_adapter']}"]
          if report.get("llm_lora", {}).get("enabled") else []),
        *([_prior_line(report["template_prior"])] if report.get("template_prior") else []),
        *([_probe_line(report["rounds"][0]["llm_probe"])] if report["rounds"][0].get("llm_probe") else []),
        f"- {report['labels_note']}",
        "",
        "| round | LLM calls | labelled seq | rechecked | labels changed | precision | recall | F1 | ROC-AUC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rounds"]:
        t = r.get("test") or {}
        lines.append(
            f"| {r['round']} | {r['llm_calls']} | {r['llm_labelled_sequences']} | {r['rechecked_sequences']} | "
            f"{r['labels_changed'] if r['labels_changed'] is not None else '-'} | {_f(t.get('precision'))} | "
            f"{_f(t.get('recall'))} | {_f(t.get('f1'))} | {_f(t.get('roc_auc'))} |"
        )
    lines += ["", "![rounds](rounds.png)", ""]
    if report.get("findings"):
        lines += findings_markdown(report["findings"])
    return "\n".join(lines)


def _prior_line(prior: dict) -> str:
    aucs = ", ".join(f"{k} {v:.3f}" for k, v in prior["held_out_auc"].items())
    return (f"- template prior (sources' labelled templates): held-out ROC-AUC {aucs} → trust {prior['trust']:.2f}"
            f" (C = {prior['strength']:g})")


def _probe_line(probe: dict) -> str:
    auc = "–" if probe.get("auc") is None else f"{probe['auc']:.3f}"
    verdict = "no distillation round ran" if probe["trust"] <= 0 else f"its labels weigh {probe['trust']:.2f}"
    parts = [f"ROC-AUC {auc} on {probe['probes']} labelled source {probe.get('unit', 'sequences')} "
             f"({probe['anomalous']} anomalous)"
             ] if "probes" in probe else []
    if "common" in probe:
        parts.append(f"{100 * probe['common_called_anomalous']:.0f}% of the target's {probe['common']} commonest "
                     f"pool sequences called anomalous")
    return f"- LLM probe: {'; '.join(parts)} → trust {probe['trust']:.2f}: {verdict}"


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _plot_rounds(report: dict, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are a nicety; the JSON report is the contract
        return
    rounds = [r["round"] for r in report["rounds"]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    f1 = [(r.get("test") or {}).get("f1") for r in report["rounds"]]
    if any(v is not None for v in f1):
        ax.plot(rounds, [v if v is not None else np.nan for v in f1], marker="o", label="test F1")
    ax.plot(rounds, [r["pool_flagged"] for r in report["rounds"]], marker="s", label="pool flagged share")
    ax.set_xlabel("round")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"FusionLog rounds: {report['target']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "rounds.png", dpi=110)
    plt.close(fig)


def _print_summary(report: dict, progress: bool) -> None:
    if not progress:
        return
    t = report.get("test") or {}
    rows = [
        ("target", report["target"]), ("sources", ",".join(report["sources"])),
        ("sessions", report["target_sessions"]), ("LLM calls", report["llm_calls"]),
        *([("pool flagged", f"{f['flagged']} of {f['sessions']} (see report.md)")]
          if (f := report.get("findings")) else []),
        *([("note", f["note"])] if f and f.get("note") else []),
        ("rounds", len(report["rounds"]) - 1), ("precision", _f(t.get("precision"))),
        ("recall", _f(t.get("recall"))), ("F1", _f(t.get("f1"))), ("ROC-AUC", _f(t.get("roc_auc"))),
        *([("test note", f"{t['note']} ({t['flagged']:.1%} of the test part flagged)")] if t.get("note") else []),
        ("wall seconds", report["wall_seconds"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows), flush=True)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
