"""Compare label-free threshold rules offline on saved harness runs (no retraining).

    python -m eval.threshold_study runs/threshold_study/dump/*/ [--method general]

Reads each run's scores.npz (test scores and labels, the pool scores and held-out source scores every
rule reads), applies every rule of `fusionlog.threshold` to the same scores, and prints test F1 and the
share of test sessions flagged per rule. The `oracle` column picks the threshold *with test labels*:
a diagnostic of how much F1 the ranking allows, never a rule.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from eval.metrics import prf
from fusionlog.errors import ConfigError
from fusionlog.threshold import THRESHOLD_RULES, best_f1_threshold, choose_threshold

ORACLE = "oracle (test labels)"


def seed_thresholds(z, prefix: str) -> dict[str, float]:
    """Threshold per rule for one method run (`prefix` = "method/seedN")."""
    systems = sorted({k.split("/")[3] for k in z.files if k.startswith(f"{prefix}/val/")})
    val = [(s, z[f"{prefix}/val/{s}/scores"], z[f"{prefix}/val/{s}/labels"], z[f"{prefix}/val/{s}/weights"])
           for s in systems]
    pool, weights = z[f"{prefix}/pool_scores"], z[f"{prefix}/pool_weights"]
    surprising = z[f"{prefix}/pool_surprising"] if f"{prefix}/pool_surprising" in z.files else None  # newer runs
    floor = float(z[f"{prefix}/unit_floor"][0]) if f"{prefix}/unit_floor" in z.files else None  # stop 17 on
    out = {}
    for rule in THRESHOLD_RULES:
        try:
            out[rule] = choose_threshold(rule, pool_scores=pool, pool_weights=weights, pool_surprising=surprising,
                                         source_validation=val, unit_floor=floor).value
        except ConfigError:  # the run lacks what this rule reads (e.g. no held-out source data): no figure
            out[rule] = float("nan")
    return out


def study(run_dir: Path, method: str) -> dict[str, tuple[float, float]]:
    """{rule: (mean test F1, mean share flagged)} over the run's seeds."""
    z = np.load(run_dir / "scores.npz", allow_pickle=False)
    labels = z["labels"]
    seeds = sorted(k for k in z.files if k.startswith(f"{method}/seed") and k.count("/") == 1
                   and f"{k}/pool_scores" in z.files)
    if not seeds:
        raise SystemExit(f"{run_dir}: no {method!r} scores with pool diagnostics (rerun `fusionlog eval`)")
    per: dict[str, list[tuple[float, float]]] = {}
    for prefix in seeds:
        scores = z[prefix]
        rules = seed_thresholds(z, prefix)
        rules[ORACLE] = best_f1_threshold(scores, labels)[0]
        for rule, thr in rules.items():
            if not np.isfinite(thr):
                per.setdefault(rule, []).append((float("nan"), float("nan")))
                continue
            flagged = scores > thr
            per.setdefault(rule, []).append((prf(labels, flagged)[2], float(flagged.mean())))
    return {rule: (float(np.mean([f for f, _ in v])), float(np.mean([s for _, s in v]))) for rule, v in per.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.threshold_study", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="harness output folders (each with results.json and scores.npz)")
    p.add_argument("--method", default="general")
    args = p.parse_args(argv)
    rules = [*THRESHOLD_RULES, ORACLE]
    print(f"method {args.method}: test F1 / share of test flagged, mean over seeds")
    print("| target | " + " | ".join(rules) + " |")
    print("|---" * (len(rules) + 1) + "|")
    for run in map(Path, args.runs):
        target = json.loads((run / "results.json").read_text(encoding="utf-8"))["target"]
        res = study(run, args.method)
        print(f"| {target} | " + " | ".join(f"{res[r][0]:.3f} / {res[r][1]:.2f}" for r in rules) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
