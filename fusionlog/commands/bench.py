"""`fusionlog bench WHAT`: performance figures (printed, never asserted). Each lives in eval/bench_*.py."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

NAME = "bench"
HELP = "performance benchmarks: parse, and any other eval/bench_*.py module"


def _bench_modules() -> list[str]:
    import eval as eval_pkg

    names = [m.name for m in pkgutil.iter_modules(eval_pkg.__path__)]
    return sorted(n[len("bench_"):] for n in names if n.startswith("bench_"))


def add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="WHAT", required=True)
    for name in _bench_modules():
        mod = importlib.import_module(f"eval.bench_{name}")
        if hasattr(mod, "add_args") and hasattr(mod, "main"):
            sp = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
            mod.add_args(sp)
            sp.set_defaults(_bench_main=mod.main)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_main(args) or 0)
