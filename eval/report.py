"""Write what a run produced: results.json, results.md (mean ± std), roc.png and pr.png.

Other tools read results.json; its shape is fixed by issue 3 (keys are only ever added).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from eval.metrics import pr_curve, roc_curve
from eval.protocol import EvalRun
from fusionlog.io import atomic_write_json, atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
ROC_PNG = "roc.png"
PR_PNG = "pr.png"
SCORES_NPZ = "scores.npz"


def save_scores(run: EvalRun, path: Path) -> None:
    """Test labels, every seed's test scores and the methods' diagnostics (pool scores, held-out source
    scores), so threshold rules can be compared offline. Plain arrays: np.load(..., allow_pickle=False)."""
    arrays = {"labels": run.labels.astype(np.int64), **run.arrays}
    for name, per_seed in run.scores.items():
        for entry, scores in zip(run.results["methods"][name]["seeds"], per_seed, strict=True):
            arrays[f"{name}/seed{entry['seed']}"] = np.asarray(scores, dtype=np.float32)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def write_run(run: EvalRun, out_dir: Path, plots: bool = True) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / RESULTS_JSON, out_dir / RESULTS_MD]
    atomic_write_json(paths[0], _clean(run.results))
    atomic_write_text(paths[1], markdown(run.results))
    if run.scores:
        paths.append(out_dir / SCORES_NPZ)
        save_scores(run, paths[-1])
    if plots and run.curves:
        paths += plot_curves(run, out_dir)
    return paths


def _fmt(x: float | None, std: float | None = None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    s = f"{x:.{digits}f}"
    return f"{s} ± {std:.{digits}f}" if std is not None and not math.isnan(std) else s


def _std(entries: list[dict], key: str) -> float:
    vals = [e[key] for e in entries if e.get(key) is not None and np.isfinite(e[key])]
    return float(np.std(vals)) if vals else float("nan")


def table_rows(results: dict) -> list[str]:
    """Markdown rows (no header) of one target, one row per method."""
    rows = []
    split = results["split"]
    ceiling = results.get("sequence_ceiling")
    for name, m in results["methods"].items():
        seeds = m.get("seeds", [])
        rows.append(
            f"| {results['target']} | {name} | {_fmt(m['f1'], m.get('f1_std'))} | {_fmt(ceiling, digits=2)} | "
            f"{_fmt(m['precision'], _std(seeds, 'precision'))} | {_fmt(m['recall'], _std(seeds, 'recall'))} | "
            f"{_fmt(m['roc_auc'], _std(seeds, 'roc_auc'))} | {_fmt(m['pr_auc'], _std(seeds, 'pr_auc'))} | "
            f"{_fmt(m['train_seconds'], digits=1)} | {_fmt(m['score_seconds'], digits=3)} | "
            f"{m.get('threshold_rule', '')} | {len(seeds)} | {split['test_sessions']} ({split['test_anomalies']}) |"
        )
    return rows


TABLE_HEADER = (
    "| target | method | F1 | seq. ceiling | precision | recall | ROC-AUC | PR-AUC | train s | score s | "
    "threshold | seeds | test (anom.) |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def markdown(results: dict) -> str:
    split = results["split"]
    lines = [
        f"# Zero-label results: target `{results['target']}`",
        "",
        f"Sources: {', '.join(results['sources'])}. Split: {split['method']}; "
        f"pool {split['pool_sessions']} sessions (labels hidden), test {split['test_sessions']} "
        f"({split['test_anomalies']} anomalous). Mean ± std over seeds.",
        "",
        TABLE_HEADER,
        *table_rows(results),
        "",
    ]
    for note in results.get("notes", []):
        lines.append(f"Note: {note}.")
    parts = {n: m["parts"] for n, m in results["methods"].items() if "parts" in m}
    if parts:
        lines += ["", "Per routed part (mean over seeds):", "",
                  "| method | part | sessions | precision | recall | F1 |", "| --- | --- | --- | --- | --- | --- |"]
        for name, per in parts.items():
            for part, v in per.items():
                lines.append(f"| {name} | {part} | {v['sessions']:.0f} | {v['precision']:.3f} | {v['recall']:.3f} | "
                             f"{v['f1']:.3f} |")
    lines.append("")
    return "\n".join(lines)


def summary_markdown(all_results: list[dict]) -> str:
    """One table over several targets (the full benchmark)."""
    lines = ["# Zero-label benchmark", "", "Mean ± std over seeds; F1 of the anomalous class.", "", TABLE_HEADER]
    for res in all_results:
        lines += table_rows(res)
    notes = [(r["target"], n) for r in all_results for n in r.get("notes", [])]
    if notes:
        lines.append("")
        lines += [f"- `{t}`: {n}" for t, n in notes]
    lines.append("")
    return "\n".join(lines)


def plot_curves(run: EvalRun, out_dir: Path) -> list[Path]:
    """ROC and PR curves of the first seed of each method (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = run.results["target"]
    labels = run.labels
    paths = []
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, scores in run.curves.items():
        fpr, tpr = roc_curve(labels, scores)
        auc = run.results["methods"][name]["seeds"][0]["roc_auc"]
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})", drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, target {target}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / ROC_PNG)
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, scores in run.curves.items():
        precision, recall, _ = pr_curve(labels, scores)
        ap = run.results["methods"][name]["seeds"][0]["pr_auc"]
        ax.plot(np.r_[0.0, recall], np.r_[precision[0] if len(precision) else 1.0, precision],
                label=f"{name} (AP {ap:.3f})", drawstyle="steps-post")
    ax.axhline(labels.mean(), color="grey", lw=0.5, ls="--", label=f"anomaly rate {labels.mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall, target {target}", ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / PR_PNG)
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def _clean(obj):
    """NaN → None so results.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, np.floating):
        return None if np.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
