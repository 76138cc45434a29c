"""`fusionlog fuse` (= `python scripts/fuse.py`): the main job, end to end, writing a detector artifact."""

from __future__ import annotations

import argparse

from fusionlog.commands._common import add_data_args, rule_from_args, spec_from_args
from fusionlog.threshold import DEFAULT_THRESHOLD_RULE, THRESHOLD_RULES

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
    p.add_argument("--llm-lora", action="store_true",
                   help="after each round, LoRA-train the LLM on labels the small model and the LLM agree on, and "
                        "label with it next round (transformers backend; meant for GPU runs)")
    p.add_argument("--llm-lora-rank", type=int, default=8, help="LoRA rank of --llm-lora")
    p.add_argument("--llm-lora-epochs", type=int, default=2, help="passes over each round's LoRA examples")
    p.add_argument("--llm-lora-max-steps", type=int, help="cap on LoRA optimizer steps per round")
    p.add_argument("--llm-lora-min-agreed", type=int, default=8,
                   help="train the round's adapter only with at least this many agreed sequences")
    p.add_argument("--rounds", type=int, default=3, help="distillation rounds after the general path")
    p.add_argument("--calls-per-round", type=int, default=16, help="distinct sequences sent to the LLM per round")
    p.add_argument("--budget-fraction", type=float, help="cap LLM-labelled sessions at this share of the pool")
    p.add_argument("--probe-per-class", type=int, default=6,
                   help="labelled source sequences per class the LLM answers first; its ROC-AUC on them sets how "
                        "much its labels count (chance or worse: no distillation round runs); 0 = off")
    p.add_argument("--probe-templates", type=int, default=12,
                   help="template teacher: labelled source templates per class and source it answers instead "
                        "(anomaly templates: seen almost only in anomalous sessions); 0 = off")
    p.add_argument("--probe-common", type=int, default=6,
                   help="the target's commonest distinct pool sequences the LLM answers first; the share it calls "
                        "anomalous (they are everyday behaviour) shrinks its trust by that much; 0 = off")
    p.add_argument("--teacher", choices=("session", "template"), default=None,
                   help="how the LLM labels: one call per template, read against the target's everyday templates "
                        "(template: few calls, no recheck, no common probe; the default), or one per distinct "
                        "sequence (session; the default with --llm-lora, which trains the LLM on session prompts)")
    p.add_argument("--deep-bound", type=float, default=None,
                   help="the deep (GRU) path's bound in the rounds, times the LLM's trust; 0 keeps the general "
                        "path's (default: 1 with the session teacher, 0 with the template teacher, whose "
                        "verdicts reach the model through the surprise weights)")
    p.add_argument("--stop-change", type=float, default=0.01,
                   help="stop when fewer than this share of pool labels change in a round (0: run every round)")
    p.add_argument("--k-examples", type=int, default=2, help="retrieved source sessions per prompt")
    p.add_argument("--out", default="", help="artifact folder (default runs/<target>)")
    p.add_argument("--resume", action="store_true", help="continue after the last complete round in --out")
    p.add_argument("--epochs", type=int, help="max epochs of the general path")
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--finetune-steps", type=int, default=60, help="distillation steps per round")
    p.add_argument("--template-prior", action="store_true",
                   help="weigh the surprise by a template classifier trained on the sources' labelled templates "
                        "(off by default: no gain on the pseudo-targets; fusionlog.template_prior)")
    p.add_argument("--threshold", choices=THRESHOLD_RULES, default=DEFAULT_THRESHOLD_RULE,
                   help="label-free threshold rule; pool-surprise flags what is more than 1 unit of surprise from "
                        "the pool (where every pool session is, e.g. a small pool of a many-template system, it "
                        "flags all and warns: try pool-otsu-distinct)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    add_data_args(p)


def default_teacher(args: argparse.Namespace) -> str:
    """The template teacher unless asked otherwise: with the embedded 0.5B model it is the one that helps
    (its session verdicts probe at trust 0, its template verdicts at 0.32-0.61 and lift openstack and hdfs);
    --llm-lora fine-tunes the LLM on session prompts, so it keeps the session teacher."""
    if args.teacher:
        return args.teacher
    return "session" if args.llm_lora else "template"


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from distill.config import RoundLoraConfig
    from distill.finetune import FinetuneConfig
    from distill.rounds import DistillConfig
    from fusionlog.pipeline import FuseConfig, fuse

    spec = spec_from_args(args.target, args)
    lora = RoundLoraConfig(rank=args.llm_lora_rank, alpha=2 * args.llm_lora_rank, epochs=args.llm_lora_epochs,
                           max_steps=args.llm_lora_max_steps, min_agreed=args.llm_lora_min_agreed, seed=args.seed)
    distill = DistillConfig(rounds=args.rounds, calls_per_round=args.calls_per_round,
                            max_fraction=args.budget_fraction, stop_change=args.stop_change,
                            probe_per_class=args.probe_per_class, probe_common=args.probe_common, lora=lora,
                            probe_templates=args.probe_templates,
                            teacher=default_teacher(args), deep_bound=args.deep_bound)
    distill = replace(distill, finetune=replace(FinetuneConfig(), steps=args.finetune_steps, seed=args.seed))
    cfg = FuseConfig(
        target=args.target, sources=tuple(args.sources), llm=args.llm, llm_backend=args.llm_backend,
        llm_base_url=args.llm_base_url, llm_adapter=args.llm_adapter, llm_lora=args.llm_lora,
        k_examples=args.k_examples, out=args.out,
        data_dir=args.data_dir, seed=args.seed, resume=args.resume, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, template_prior=args.template_prior, device=args.device,
        threshold=args.threshold,
        rule=rule_from_args(args),
        log_format=args.log_format,
        progress=not args.quiet, distill=distill,
    )
    result = fuse(cfg, spec=spec)
    print(f"artifact: {result.out_dir}")
    if not args.quiet:  # what to do with it; a serve of this folder already running keeps the old model until told
        import shlex

        print(f"serve it: fusionlog serve --model {shlex.quote(str(result.out_dir))} (a serve of this folder already "
              "running loads it on POST /v1/reload or SIGHUP)")
    return 0
