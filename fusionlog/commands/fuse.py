"""`fusionlog fuse` (= `python scripts/fuse.py`): the main job, end to end, writing a detector artifact."""

from __future__ import annotations

import argparse

from fusionlog.commands._common import add_data_args, rule_from_args, spec_from_args

NAME = "fuse"
HELP = "train a zero-label detector for a target system (general path + LLM distillation rounds)"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="dataset name, .jsonl session file, or raw log file")
    p.add_argument("--sources", nargs="*", default=(), help="labelled source datasets (default: other systems)")
    p.add_argument("--llm", default="qwen2.5-coder-0.5b",
                   help="qwen2.5-coder-0.5b (CPU default), qwen2.5-coder-1.5b, smollm2-135m, qwen2.5-7b (GPU), "
                        "a .gguf file, a model folder or a served model id")
    p.add_argument("--llm-backend", default="auto", choices=["auto", "transformers", "vllm", "openai"])
    p.add_argument("--llm-base-url", default="http://127.0.0.1:8000/v1", help="openai backend endpoint")
    p.add_argument("--llm-adapter", help="LoRA adapter folder from `fusionlog llm-tune`")
    p.add_argument("--rounds", type=int, default=3, help="distillation rounds after the general path")
    p.add_argument("--calls-per-round", type=int, default=16, help="distinct sequences sent to the LLM per round")
    p.add_argument("--budget-fraction", type=float, help="cap LLM-labelled sessions at this share of the pool")
    p.add_argument("--k-examples", type=int, default=2, help="retrieved source sessions per prompt")
    p.add_argument("--out", default="", help="artifact folder (default runs/<target>)")
    p.add_argument("--resume", action="store_true", help="continue after the last complete round in --out")
    p.add_argument("--epochs", type=int, help="max epochs of the general path")
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--finetune-steps", type=int, default=60, help="distillation steps per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    add_data_args(p)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from distill.finetune import FinetuneConfig
    from distill.rounds import DistillConfig
    from fusionlog.pipeline import FuseConfig, fuse

    spec = spec_from_args(args.target, args)
    distill = DistillConfig(rounds=args.rounds, calls_per_round=args.calls_per_round,
                            max_fraction=args.budget_fraction)
    distill = replace(distill, finetune=replace(FinetuneConfig(), steps=args.finetune_steps, seed=args.seed))
    cfg = FuseConfig(
        target=args.target, sources=tuple(args.sources), llm=args.llm, llm_backend=args.llm_backend,
        llm_base_url=args.llm_base_url, llm_adapter=args.llm_adapter, k_examples=args.k_examples, out=args.out,
        data_dir=args.data_dir, seed=args.seed, resume=args.resume, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, device=args.device, rule=rule_from_args(args),
        log_format=args.log_format,
        progress=not args.quiet, distill=distill,
    )
    result = fuse(cfg, spec=spec)
    print(f"artifact: {result.out_dir}")
    return 0
