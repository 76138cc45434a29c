"""`fusionlog eval`: the zero-label benchmark (issue 3) for one or more targets.

    fusionlog eval --target openstack --methods unseen-template rarity surprise source-only general \
        --seeds 3 --out runs/os

Writes results.json, results.md, roc.png and pr.png per target (in OUT, or OUT/<target> when several
targets are given, plus OUT/summary.md). Training flags (--epochs, --meta-order, ...) come from
`TrainConfig`'s fields, so defaults live in one place; they apply to the trained methods
(`source-only` always keeps meta and the discriminator off).
"""

from __future__ import annotations

import argparse
import dataclasses

NAME = "eval"
HELP = "zero-label benchmark: unseen-template / source-only / general on a target (results.json, table, plots)"

#: TrainConfig fields not exposed as flags (set per seed / by --device).
_SKIP_FIELDS = ("seed", "device")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", nargs="+", required=True,
                   help="labelled target dataset(s): openstack hdfs hadoop hdfs-100k bgl")
    p.add_argument("--sources", nargs="+", help="source datasets (default: one labelled set per other system)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods to run (default: unseen-template rarity surprise source-only general); "
                        "see --list-methods")
    p.add_argument("--list-methods", action="store_true", help="print the registered methods and exit")
    p.add_argument("--seeds", type=int, default=3, help="number of training seeds (0..N-1)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--pool-fraction", type=float, default=0.6, help="share of the target used as unlabelled pool")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the shuffle split (sets without times)")
    p.add_argument("--threshold", default=None, help="label-free threshold rule (default: the detector's)")
    p.add_argument("--device", default="cpu", help="torch device for training and scoring")
    p.add_argument("--data-dir", help="data folder (default: $FUSIONLOG_DATA, ./data, ../shared/data)")
    p.add_argument("--cache-dir", help="prepared-data folder (default: $FUSIONLOG_CACHE/prepared)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--resume", action="store_true",
                   help="reuse the (method, seed) results an interrupted run with the same settings saved in "
                        "OUT/checkpoints; run only the rest")
    p.add_argument("--prepared-dir", help="read already-prepared folders from here, never re-prepare "
                   "(machines without the raw data or the embedding model)")
    p.add_argument("--llm", default="qwen2.5-coder-0.5b", help="LLM of the llm-only and fusionlog methods")
    p.add_argument("--llm-backend", default="auto", choices=["auto", "transformers", "vllm", "openai"])
    p.add_argument("--llm-base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--llm-budget", type=int, default=32,
                   help="llm-only: distinct test sequences asked; fusionlog: LLM calls per round")
    p.add_argument("--rounds", type=int, default=2, help="fusionlog: distillation rounds")
    p.add_argument("--llm-probe", type=int, default=6,
                   help="fusionlog: labelled source sequences per class that measure the LLM first (0 = off)")
    p.add_argument("--llm-probe-templates", type=int, default=12,
                   help="fusionlog, template teacher: labelled source templates per class and source that measure "
                        "the LLM first (0 = off)")
    p.add_argument("--teacher", choices=("session", "template"), default="template",
                   help="fusionlog / llm-only: the LLM labels templates (template, the main job's default) or "
                        "sequences (session)")
    p.add_argument("--anchors", help=".npy of the anchor-phrase embeddings (default: embed them now)")
    p.add_argument("--model", dest="model_set", action="append", default=[], metavar="FIELD=VALUE",
                   help="SessionModelConfig field of the trained methods, e.g. --model deep_bound=0 (repeatable)")
    add_train_flags(p)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (vLLM's add_cli_args idea); unset flags keep the dataclass default."""
    from fusionlog.training.config import TrainConfig

    g = p.add_argument_group("training (TrainConfig)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIP_FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if f.type in (bool, "bool"):
            g.add_argument(flag, dest=f"train_{f.name}", action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            g.add_argument(flag, dest=f"train_{f.name}", type=kind, default=argparse.SUPPRESS, metavar=f.name.upper(),
                           help=help_text)


def parse_model_overrides(items: list[str]) -> dict:
    """`FIELD=VALUE` strings → typed SessionModelConfig fields; a clear error names a bad one."""
    from fusionlog.errors import ConfigError
    from fusionlog.model import SessionModelConfig

    types = {f.name: str(f.type) for f in dataclasses.fields(SessionModelConfig)}
    out: dict = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in types:
            raise ConfigError(f"--model {item!r}: expected FIELD=VALUE with FIELD one of {sorted(types)}")
        kind = types[name]
        try:
            if kind == "bool":
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                out[name] = raw.lower() in ("true", "1")
            else:
                out[name] = {"int": int, "float": float}.get(kind, str)(raw)
        except ValueError as exc:
            raise ConfigError(f"--model {item!r}: {name} takes a {kind}") from exc
    SessionModelConfig(**out)  # validate ranges now, before any data is read
    return out


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eval.checkpoints import Checkpoints
    from eval.methods import METHODS
    from eval.protocol import EvalConfig, prepared_dir_loader, run_eval
    from eval.report import summary_markdown, write_run
    from fusionlog.errors import ConfigError
    from fusionlog.io import atomic_write_text, check_out_dir, load_npy

    if args.list_methods:
        for name, spec in METHODS.items():
            print(f"{name:18s} {spec.description}")
        return 0
    if not args.out:
        raise ConfigError("give --out DIR for results.json, results.md and the plots")
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: must be >= 1")
    overrides = {k[len("train_"):]: v for k, v in vars(args).items() if k.startswith("train_")}
    loader = prepared_dir_loader(Path(args.prepared_dir)) if args.prepared_dir else None
    anchors = load_npy(Path(args.anchors)) if args.anchors else None
    methods = args.methods or EvalConfig.__dataclass_fields__["methods"].default
    if {"llm-only", "fusionlog"} & set(methods):
        from fusionlog.pipeline import preflight_llm

        preflight_llm(args.llm, args.llm_backend)  # before any training, not after it
    out = check_out_dir(args.out, "--out")  # likewise: a folder it cannot write is said before the work
    all_results = []
    for target in args.target:
        cfg = EvalConfig(
            target=target,
            sources=tuple(args.sources) if args.sources else None,
            methods=tuple(methods),
            seeds=tuple(range(args.seeds)),
            pool_fraction=args.pool_fraction,
            split_seed=args.split_seed,
            threshold_rule=args.threshold,
            device=args.device,
            train_overrides=overrides,
            model_overrides=parse_model_overrides(args.model_set),
            llm={"llm": args.llm, "llm_backend": args.llm_backend, "llm_base_url": args.llm_base_url,
                 "llm_budget": args.llm_budget, "rounds": args.rounds, "llm_probe": args.llm_probe,
                 "llm_probe_templates": args.llm_probe_templates, "teacher": args.teacher},
        )
        folder = out / target if len(args.target) > 1 else out
        result = run_eval(cfg, args.data_dir, Path(args.cache_dir) if args.cache_dir else None,
                          progress=not args.quiet, loader=loader, anchor_vectors=anchors,
                          checkpoints=Checkpoints.for_run(folder, cfg), resume=args.resume)
        write_run(result, folder, plots=not args.no_plots)
        all_results.append(result.results)
        _print_summary(result.results)
    if len(args.target) > 1:
        atomic_write_text(out / "summary.md", summary_markdown(all_results))
    print(f"wrote {out}")
    return 0


def _print_summary(results: dict) -> None:
    ceiling = results.get("sequence_ceiling")
    for name, m in results["methods"].items():
        print(f"{results['target']:10s} {name:16s} F1 {m['f1']:.3f} ± {m['f1_std']:.3f}  "
              f"ROC-AUC {m['roc_auc']:.3f}  PR-AUC {m['pr_auc']:.3f}  train {m['train_seconds']:.1f}s  "
              f"ceiling {ceiling if ceiling is not None else '-'}")
