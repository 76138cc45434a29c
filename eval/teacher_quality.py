"""How good were the LLM's labels on the target? Scored afterwards, with the pool's labels.

    python -m eval.teacher_quality RUN [RUN ...] [--method fusionlog] [--prepared-dir DIR]

The `fusionlog` method never sees a target label; it saves the P(anomalous) the LLM gave each pool
session (`<method>/seedN/llm_pool_probs` in scores.npz). This rebuilds the same split of the target
(results.json's pool_fraction and split_seed) and reports, per seed, over the distinct sequences the
LLM labelled: how many, how many are anomalous, ROC-AUC, accuracy at P >= 0.5 and the share it called
anomalous. A diagnostic that explains a run (is the teacher or the distillation at fault?); it never
feeds one.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eval.metrics import roc_auc


def teacher_quality(probs: np.ndarray, labels: np.ndarray, sequences: Sequence[tuple]) -> dict:
    """Quality of the LLM's verdicts per distinct labelled sequence (NaN = the LLM was not asked)."""
    seen: dict[tuple, tuple[float, int]] = {}
    for p, y, seq in zip(probs, labels, sequences, strict=True):
        if np.isfinite(p):
            seen.setdefault(tuple(seq), (float(p), int(y)))
    if not seen:
        return {"sequences": 0}
    p = np.array([v[0] for v in seen.values()])
    y = np.array([v[1] for v in seen.values()])
    both = 0 < y.sum() < len(y)
    return {
        "sequences": len(seen),
        "anomalous": int(y.sum()),
        "roc_auc": round(float(roc_auc(y, p)), 4) if both else None,
        "accuracy": round(float(((p >= 0.5) == (y == 1)).mean()), 4),
        "called_anomalous": round(float((p >= 0.5).mean()), 4),
    }


def pool_of(run: Path, loader=None) -> tuple[np.ndarray, list[tuple]]:
    """(labels, event sequences) of the run's adaptation pool, in the order the method saw it."""
    from fusionlog.data import split_sessions

    res = json.loads((run / "results.json").read_text(encoding="utf-8"))
    cfg = res["config"]
    if loader is None:
        from fusionlog.prepare import prepare

        def loader(name: str):
            return prepare(name, progress=False)

    split = split_sessions(loader(res["target"]).dataset, cfg["pool_fraction"], cfg["split_seed"])
    if len(split.pool) != res["split"]["pool_sessions"]:
        raise SystemExit(f"{run}: the rebuilt pool has {len(split.pool)} sessions, the run had "
                         f"{res['split']['pool_sessions']}: the data changed since")
    return np.array([s.label for s in split.pool], dtype=np.int64), [tuple(s.event_ids) for s in split.pool]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.teacher_quality", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="`fusionlog eval` output folders (results.json + scores.npz)")
    p.add_argument("--method", default="fusionlog")
    p.add_argument("--prepared-dir", help="read prepared datasets from here (as `fusionlog eval --prepared-dir`)")
    args = p.parse_args(argv)
    loader = None
    if args.prepared_dir:
        from eval.protocol import prepared_dir_loader

        loader = prepared_dir_loader(Path(args.prepared_dir))
    print("| run | seed | LLM-labelled sequences | anomalous | ROC-AUC | accuracy | called anomalous |")
    print("|---|---|---|---|---|---|---|")
    for run in map(Path, args.runs):
        z = np.load(run / "scores.npz", allow_pickle=False)
        keys = sorted(k for k in z.files if k.startswith(f"{args.method}/seed") and k.endswith("/llm_pool_probs"))
        if not keys:
            raise SystemExit(f"{run}: no {args.method!r} LLM verdicts saved (rerun `fusionlog eval`)")
        labels, seqs = pool_of(run, loader)
        for key in keys:
            q = teacher_quality(z[key], labels, seqs)
            print(f"| {run} | {key.split('/')[1]} | {q['sequences']} | {q.get('anomalous', 0)} | "
                  f"{q.get('roc_auc')} | {q.get('accuracy')} | {q.get('called_anomalous')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
