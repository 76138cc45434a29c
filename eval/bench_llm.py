"""Speed of the local LLM backend on the template teacher's prompts (printed, never asserted).

    fusionlog bench llm --dataset openstack --templates 24                 # embedded 0.5B, both modes
    fusionlog bench llm --llm qwen2.5-coder-1.5b --dataset hdfs

Each template of the dataset is one prompt (`prompts/label_template.yaml`), as the rounds send them.
After a two-prompt warm-up the backend scores them all once with every prompt run in full, then once with
each prompt starting from the previous prompt's KV cache over their shared head (`reuse_prefix`, default).
Figures: seconds per call, prompt tokens per call, the share of prompt tokens reused, and the largest
difference between the two modes' P(anomalous) (float rounding only).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from eval.figures import report_figures, standalone


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--llm", default="qwen2.5-coder-0.5b", help="a local model name (transformers backend)")
    ap.add_argument("--dataset", default="openstack", help="whose templates to ask about")
    ap.add_argument("--templates", type=int, default=24, help="prompts per pass (the dataset's first N templates)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", help="also write the figures to this JSON file")


def template_prompts(dataset: str, n: int) -> list:
    """The rendered chat messages of the dataset's first `n` templates, one template per prompt."""
    from distill.config import LabelConfig
    from distill.labeller import render_messages
    from distill.prompts import load_prompt
    from fusionlog.data import load_dataset
    from fusionlog.types import Session

    ds = load_dataset(dataset, progress=False)
    prompt = load_prompt("label_template")
    config = replace(LabelConfig(), prompt="label_template", k_examples=0)
    return [render_messages(prompt, config, Session(ds.system, f"template:{e}", [e]), ds.templates, ds.system, None)
            for e in range(min(n, len(ds.templates)))]


def timed_pass(backend, prompts: list, reuse: bool) -> tuple[float, list[float], int]:
    """(seconds per call, P(anomalous) per prompt, prompt tokens reused) for one pass in one mode."""
    backend.reuse_prefix = reuse
    backend.forget_prefix()  # each pass starts cold: its first prompt runs in full
    reused = backend.reused_tokens
    t0 = time.perf_counter()
    results = backend.score(prompts)
    seconds = (time.perf_counter() - t0) / max(1, len(prompts))
    return seconds, [r.p_anomalous for r in results], backend.reused_tokens - reused


def main(args: argparse.Namespace) -> int:
    from distill.backends.transformers_local import TransformersBackend

    prompts = template_prompts(args.dataset, args.templates)
    backend = TransformersBackend(args.llm, threads=args.threads)
    try:
        tokens = sum(len(backend.encode(m)) for m in prompts)
        timed_pass(backend, prompts[:2], False)  # warm-up: first-call allocations out of the figures
        full_s, full_p, _ = timed_pass(backend, prompts, False)
        reuse_s, reuse_p, reused = timed_pass(backend, prompts, True)
    finally:
        backend.close()
    figures = {
        "llm": args.llm,
        "dataset": args.dataset,
        "prompts": len(prompts),
        "prompt_tokens_per_call": round(tokens / max(1, len(prompts)), 1),
        "seconds_per_call_full": round(full_s, 3),
        "seconds_per_call_reuse": round(reuse_s, 3),
        "speedup": round(full_s / reuse_s, 2) if reuse_s > 0 else None,
        "reused_token_share": round(reused / max(1, tokens), 3),
        "max_abs_p_difference": max(abs(a - b) for a, b in zip(full_p, reuse_p, strict=True)) if prompts else 0.0,
        "load_seconds": round(backend.load_seconds, 1),
    }
    report_figures(figures, args.json, width=26)
    return 0


def cli(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
