"""`fusionlog label`: LLM pseudo-labels for a target's sessions (verdicts JSONL + summary JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fusionlog.commands._common import add_data_args, rule_from_args, spec_from_args
from fusionlog.data.logfiles import safe_name

NAME = "label"
HELP = "ask an LLM to label a target's sessions (deduplicated, cached, budgeted); writes verdicts + summary"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="dataset to label (its adaptation pool by default)")
    p.add_argument("--llm", default=None, help="alias (qwen2.5-coder-0.5b default, qwen2.5-coder-1.5b, "
                   "smollm2-135m, qwen2.5-7b), a .gguf file, a model folder, or a served model id")
    p.add_argument("--backend", choices=("transformers", "vllm", "openai"), default="transformers")
    p.add_argument("--budget", type=int, default=None, help="at most N distinct sequences sent to the LLM")
    p.add_argument("--fraction", type=float, default=None, help="at most this fraction of the sessions")
    p.add_argument("--out", default=None, help="output folder (default runs/label-TARGET)")
    p.add_argument("--sources", nargs="+", default=None, help="labelled source datasets for few-shot examples")
    p.add_argument("--k", type=int, default=None, help="few-shot examples per prompt (0 = none; default 2)")
    p.add_argument("--nearest", action="store_true", help="k nearest examples of any label (default: per label)")
    p.add_argument("--prompt", default="label_session", help="prompt name in prompts/ or a .yaml file")
    p.add_argument("--order", choices=("frequency", "seeded"), default="frequency",
                   help="order without small-model scores: most frequent first, or a seeded shuffle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-session-tokens", type=int, default=None)
    p.add_argument("--reason-tokens", type=int, default=0, help="generate a short reason (slower)")
    p.add_argument("--adapter", default=None, help="LoRA folder from `fusionlog llm-tune` (transformers)")
    p.add_argument("--calibration", default=None, help="calibration.json (default: the adapter's, if any)")
    p.add_argument("--small-probs", default=None, help=".npy of small-model P(anomalous) per session: rank by it")
    p.add_argument("--whole-dataset", action="store_true", help="label every session, not only the pool")
    p.add_argument("--cache", default=None, help="verdict cache (default $FUSIONLOG_CACHE/llm_verdicts.sqlite)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="openai backend endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the API key")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--concurrency", type=int, default=4)
    add_data_args(p)  # a user's raw logs (file, directory, glob) as elsewhere; --data-dir for named datasets


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args.target, args)  # before anything slow: a bad format or empty glob fails now
    from distill.config import BackendConfig, LabelConfig
    from distill.jobs import LabelJob, run_label
    from distill.models import DEFAULT_MODEL

    k, max_tokens = args.k, args.max_session_tokens
    if args.adapter:  # label with the prompt shape the adapter was trained on, unless told otherwise
        from distill.lora import read_adapter_meta

        settings = read_adapter_meta(Path(args.adapter)).get("label_settings", {})
        k = settings.get("k_examples", 0) if k is None else k
        max_tokens = settings.get("max_session_tokens") if max_tokens is None else max_tokens
    backend = BackendConfig(
        backend=args.backend, model=args.llm or DEFAULT_MODEL, adapter=args.adapter, base_url=args.base_url,
        api_key_env=args.api_key_env, timeout_s=args.timeout, concurrency=args.concurrency,
    )
    label_kwargs = {"prompt": args.prompt, "max_calls": args.budget, "fraction": args.fraction,
                    "order": args.order, "seed": args.seed, "reason_tokens": args.reason_tokens}
    if k is not None:
        label_kwargs["k_examples"] = k
    if max_tokens is not None:
        label_kwargs["max_session_tokens"] = max_tokens
    job = LabelJob(
        target=args.target, backend=backend, label=LabelConfig(**label_kwargs),
        out_dir=args.out or f"runs/label-{safe_name(Path(args.target).name, 'target')}",
        sources=tuple(args.sources) if args.sources else None, spec=spec, rule=rule_from_args(args),
        balanced_examples=not args.nearest, whole_dataset=args.whole_dataset, data_dir=args.data_dir,
        cache_path="" if args.no_cache else args.cache, calibration=args.calibration,
        small_probs=args.small_probs, progress=not args.quiet,
    )
    summary = run_label(job)
    print(json.dumps({k: summary[k] for k in ("target", "model", "stats", "quality")}, indent=2))
    return 0

