"""Should the template prior be on? Its label-free test: pseudo-targets (each labelled system the target of others).

    python -m eval.prior_study                                   # hdfs openstack bgl hadoop, pairs of sources
    python -m eval.prior_study --systems hdfs openstack bgl --json out.json

For every labelled system T and every pair of the other systems as sources (T's own labels never train or
choose anything), the prior is fitted on the pair (`fusionlog.template_prior.fit_template_prior`, its trust
from the pair's leave-one-out) and T is scored as the general path ranks it, by its set surprise against
T's unlabelled pool (first 60%), at the a-priori 1-unit cut, with and without the prior's weights. The
figures: the prior's ROC-AUC on T's labelled templates, and T's test F1 and ROC-AUC both ways. No training
of the session model is needed: its wide path ranks by this surprise, the GRU only breaking ties.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass

import numpy as np

from eval.figures import report_figures, standalone

DEFAULT_SYSTEMS = ("hdfs", "openstack", "bgl", "hadoop")


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--systems", nargs="+", default=list(DEFAULT_SYSTEMS),
                    help="labelled datasets, one per system (each is a pseudo-target of the others)")
    ap.add_argument("--sources-per-run", type=int, default=2, help="sources of each pseudo-target")
    ap.add_argument("--data-dir", help="data folder (default: $FUSIONLOG_DATA, ./data, ../shared/data)")
    ap.add_argument("--json", help="also write the figures to this JSON file")


@dataclass
class PseudoTargetRun:
    target: str
    sources: tuple[str, ...]
    trust: float
    template_auc: float  # the prior's ROC-AUC on the target's labelled templates (a diagnostic: never used)
    f1_plain: float
    f1_prior: float
    auc_plain: float
    auc_prior: float


def surprise_scores(stats, sessions) -> np.ndarray:
    return np.array([stats.surprise(s.event_ids, in_corpus=False) for s in sessions], dtype=np.float64)


def pseudo_target_run(target, sources: list, pool_fraction: float = 0.6) -> PseudoTargetRun | None:
    """One pseudo-target (prepared datasets); None when the sources give no prior (too few labelled templates)."""
    from eval.metrics import prf, roc_auc
    from fusionlog.data import split_sessions
    from fusionlog.model import SURPRISE_UNIT, ReferenceStats, SessionModelConfig
    from fusionlog.template_prior import fit_template_prior, labelled_templates

    prior = fit_template_prior([(p.dataset.system, p.vectors, p.dataset.sessions) for p in sources])
    if prior is None:
        return None
    split = split_sessions(target.dataset, pool_fraction, 0)
    stats = ReferenceStats.from_sessions(split.pool, len(target.vectors), trim=SessionModelConfig().trim_reference)
    labels = np.array([int(s.label) for s in split.test])
    plain = surprise_scores(stats, split.test)
    weighted = surprise_scores(stats.with_have_weights(prior.have_weights(target.vectors)), split.test)
    pos, neg = labelled_templates(target.dataset.sessions)
    template_auc = roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))], prior.probs(target.vectors)[pos + neg])
    return PseudoTargetRun(target.dataset.name, tuple(p.dataset.name for p in sources), prior.trust, template_auc,
                           prf(labels, plain > SURPRISE_UNIT)[2], prf(labels, weighted > SURPRISE_UNIT)[2],
                           roc_auc(labels, plain), roc_auc(labels, weighted))


def main(args: argparse.Namespace) -> int:
    from fusionlog.prepare import prepare

    prepared = {name: prepare(name, args.data_dir, progress=False) for name in args.systems}
    runs: list[PseudoTargetRun] = []
    for target in args.systems:
        others = [n for n in args.systems if n != target]
        for pair in itertools.combinations(others, args.sources_per_run):
            run = pseudo_target_run(prepared[target], [prepared[n] for n in pair])
            if run is None:
                print(f"{target} from {'+'.join(pair)}: no prior (too few labelled source templates)")
                continue
            runs.append(run)
            print(f"{target:10s} from {'+'.join(pair):20s} trust {run.trust:.2f} template AUC {run.template_auc:.3f}"
                  f" | F1 {run.f1_plain:.3f} -> {run.f1_prior:.3f}"
                  f" | ROC-AUC {run.auc_plain:.3f} -> {run.auc_prior:.3f}",
                  flush=True)
    if not runs:
        raise SystemExit("no pseudo-target had a prior: give more labelled systems")
    delta = np.array([r.f1_prior - r.f1_plain for r in runs])
    figures = {
        "pseudo_targets": len(runs),
        "mean_f1_plain": round(float(np.mean([r.f1_plain for r in runs])), 4),
        "mean_f1_prior": round(float(np.mean([r.f1_prior for r in runs])), 4),
        "prior_better": int((delta > 1e-9).sum()),
        "prior_worse": int((delta < -1e-9).sum()),
        "ties": int((np.abs(delta) <= 1e-9).sum()),
        "mean_template_auc": round(float(np.mean([r.template_auc for r in runs])), 4),
        "runs": [r.__dict__ for r in runs],
    }
    report_figures(figures, args.json, hide=("runs",))
    return 0


if __name__ == "__main__":
    raise SystemExit(standalone(__doc__, add_args, main))
