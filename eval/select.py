"""Label-free model selection: pick a setting by leave-one-source-system-out, then read its target result.

    python -m eval.select --selection SEL_DIR --full FULL_DIR --targets openstack hdfs hadoop hdfs-100k bgl

Why: the zero-label setting forbids choosing a setting (a model option, a threshold rule) on the target's
labels, but the *sources* are labelled. Each source system in turn plays the target of the others (its
own pool and test split, the harness's protocol); the (setting, threshold rule) with the best mean F1
over those pseudo-targets is chosen for the real target, whose labels only score the choice afterwards.

Layout read: `SEL_DIR/<setting>/<any>/` and `FULL_DIR/<setting>/<target>/` are `fusionlog eval` output
folders (results.json + scores.npz, e.g. made with `--model deep_bound=0.3`); `<setting>` is any label.
The target's own system never appears among its pseudo-targets or their sources.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from eval.protocol import default_sources
from eval.threshold_study import ORACLE, study
from fusionlog.data import system_of
from fusionlog.detector import DEFAULT_THRESHOLD_RULE


def load_runs(root: Path, method: str) -> dict[str, list[tuple[str, list[str], dict]]]:
    """{setting: [(target, sources, {rule: (F1, share flagged)}), ...]} for every run folder under root."""
    out: dict[str, list[tuple[str, list[str], dict]]] = {}
    for setting in sorted(p for p in root.iterdir() if p.is_dir()):
        for run in sorted(p for p in setting.iterdir() if (p / "scores.npz").is_file()):
            res = json.loads((run / "results.json").read_text(encoding="utf-8"))
            rules = {k: v for k, v in study(run, method).items() if k != ORACLE}
            out.setdefault(setting.name, []).append((res["target"], list(res["sources"]), rules))
    return out


def select(target: str, selection: dict, rules: list[str] | None = None,
           sources: list[str] | None = None) -> tuple[str, str, float, int]:
    """(setting, rule, mean pseudo-target F1, pseudo-targets used) for `target`; no label of it is read."""
    sources = sources or default_sources(target)
    system = system_of(target)
    best: tuple[float, str, str, int] | None = None
    for setting, runs in selection.items():
        used = [(t, r) for t, srcs, r in runs
                if t in sources and set(srcs) == set(sources) - {t} and system not in map(system_of, [t, *srcs])]
        if len(used) < len(sources):
            continue  # this setting lacks a pseudo-target run: not comparable
        for rule in rules or list(used[0][1]):
            f1 = float(np.mean([r[rule][0] for _, r in used]))
            if not np.isfinite(f1):
                continue  # a run lacks what this rule reads (older runs saved no surprise verdicts)
            if best is None or f1 > best[0] + 1e-9:
                best = (f1, setting, rule, len(used))
    if best is None:
        raise SystemExit(f"{target}: no setting has a run for every source {sources} as pseudo-target")
    return best[1], best[2], best[0], best[3]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.select", description=__doc__.splitlines()[0])
    p.add_argument("--selection", required=True, help="pseudo-target runs, one folder per setting")
    p.add_argument("--full", required=True, help="target runs, one folder per setting, then one per target")
    p.add_argument("--targets", nargs="+", required=True)
    p.add_argument("--method", default="general")
    p.add_argument("--rules", nargs="+", help="threshold rules to choose from (default: all label-free rules)")
    p.add_argument("--default", required=True, help="the setting used without selection (a folder name)")
    p.add_argument("--default-rule", default=DEFAULT_THRESHOLD_RULE, help="the threshold rule used without selection")
    args = p.parse_args(argv)
    selection = load_runs(Path(args.selection), args.method)
    print(f"| target | chosen setting | chosen threshold | pseudo-target F1 (n) | target F1 | "
          f"default F1 ({args.default}, {args.default_rule}) |")
    print("|---|---|---|---|---|---|")
    full = Path(args.full)
    for target in args.targets:
        setting, rule, f1, n = select(target, selection, args.rules)
        chosen = study(full / setting / target, args.method)[rule][0]
        default = study(full / args.default / target, args.method)[args.default_rule][0]
        print(f"| {target} | {setting} | {rule} | {f1:.3f} ({n}) | {chosen:.3f} | {default:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
