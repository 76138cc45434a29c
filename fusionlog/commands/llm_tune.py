"""`fusionlog llm-tune`: a small LoRA adapter + calibration for the LLM, from labelled SOURCE sessions."""

from __future__ import annotations

import argparse
import json

NAME = "llm-tune"
HELP = "train a small LoRA adapter (peft) on labelled source sessions and calibrate it on held-out sources"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sources", nargs="+", required=True, help="labelled datasets of systems other than the target")
    p.add_argument("--llm", default=None, help="base model (default qwen2.5-coder-0.5b); a local alias/.gguf/folder")
    p.add_argument("--out", default=None, help="adapter folder to write (calibrate-only: calibration folder)")
    p.add_argument("--prompt", default="label_session")
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--train-per-class", type=int, default=None, help="distinct source sequences per label")
    p.add_argument("--calib-per-class", type=int, default=None, help="held-out sequences per label (calibration)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--max-session-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--calibrate-only", action="store_true", help="no LoRA: fit calibration.json for the base model")
    p.add_argument("--adapter", default=None, help="with --calibrate-only: recalibrate this adapter in place")
    p.add_argument("--data-dir", default=None)


def run(args: argparse.Namespace) -> int:
    from distill.config import TuneConfig
    from distill.jobs import TuneJob, run_tune
    from distill.models import DEFAULT_MODEL

    overrides = {
        "rank": args.rank, "train_per_class": args.train_per_class, "calib_per_class": args.calib_per_class,
        "epochs": args.epochs, "lr": args.lr, "max_session_tokens": args.max_session_tokens, "seed": args.seed,
    }
    if not args.out and not (args.calibrate_only and args.adapter):
        from fusionlog.errors import ConfigError

        raise ConfigError("llm-tune: give --out (or --calibrate-only --adapter DIR)")
    tune = TuneConfig(**{k: v for k, v in overrides.items() if v is not None})
    meta = run_tune(TuneJob(
        sources=tuple(args.sources), model=args.llm or DEFAULT_MODEL, out_dir=args.out or args.adapter, tune=tune,
        prompt=args.prompt, data_dir=args.data_dir, calibrate_only=args.calibrate_only, adapter=args.adapter,
        progress=not args.quiet,
    ))
    print(json.dumps(meta, indent=2, default=str))
    return 0
