"""Router figures (printed, never asserted): FAISS speed on CPU, and the general/proprietary split per target.

    python -m eval.bench_router                 # index build + query speed at 1e4, 1e5, 1e6 vectors
    python -m eval.bench_router --sizes 10000   # a quick run
    python -m eval.bench_router --ivf           # also IVF (k-means training takes minutes on 2 cores)
    python -m eval.bench_router --splits        # split sizes and anomaly rate per part, every labelled target

Speed uses random unit vectors (384-d, the embedding size): search cost depends on n and d, not on what
the vectors mean. The split table reads target labels for its anomaly-rate columns only; the router
never sees them. Both are bounded to a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import numpy as np

logger = logging.getLogger(__name__)

DIM = 384
TARGETS = ("openstack", "hdfs", "hadoop", "hdfs-100k", "bgl")
SOURCE_BY_SYSTEM = {"hdfs": "hdfs", "openstack": "openstack", "hadoop": "hadoop", "bgl": "bgl"}


# -- speed ----------------------------------------------------------------------------------------------


def random_unit(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """(n, dim) float32 unit rows, generated in chunks so 1e6 rows never need a float64 copy."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - lo), dim), dtype=np.float32)
        out[lo: lo + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def planted_queries(base: np.ndarray, m: int, seed: int, cosine: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """m queries, each a noisy copy (cosine about `cosine`) of a random base row, and those rows.

    Why planted: among random 384-d points every "neighbour" is about as far as any other, so recall
    against exact search would measure noise; a router query has a real near neighbour.
    """
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(base), m, replace=False)
    noise = rng.standard_normal((m, base.shape[1]), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    sigma = np.sqrt(1.0 / cosine**2 - 1.0)
    q = base[rows] + sigma * noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), rows


def time_queries(index, queries: np.ndarray, k: int, singles: int) -> tuple[dict, np.ndarray]:
    """Batch throughput and single-query latency (median of `singles` one-row searches)."""
    t0 = time.perf_counter()
    _, ids = index.search(queries, k)
    batch_s = time.perf_counter() - t0
    lat = []
    for q in queries[:singles]:
        t = time.perf_counter()
        index.search(q[None, :], k)
        lat.append(time.perf_counter() - t)
    return {
        "batch_queries": len(queries),
        "batch_s": round(batch_s, 4),
        "qps": round(len(queries) / batch_s, 1),
        "single_ms_median": round(1000 * statistics.median(lat), 3),
    }, ids


def bench_speed(sizes: list[int], queries: int, k: int, threads: list[int], ivf: bool, ivf_nlist: int,
                ivf_train: int) -> list[dict]:
    import faiss

    from router.config import IndexConfig
    from router.index import VectorIndex

    rows = []
    for n in sizes:
        base = random_unit(n, DIM, seed=0)
        q, planted = planted_queries(base, min(queries, n), seed=1)
        singles = 20 if n <= 100_000 else 10
        faiss.omp_set_num_threads(max(threads))
        flat = VectorIndex.build(base, IndexConfig(use_gpu="never"))
        build_s = flat.build_seconds
        exact_ids = None
        for t in threads:
            faiss.omp_set_num_threads(t)
            res, ids = time_queries(flat, q, k, singles)
            exact_ids = ids if exact_ids is None else exact_ids
            rows.append({"n": n, "index": "flat", "threads": t, "build_s": round(build_s, 3), **res,
                         "planted_at_1": round(float(np.mean(ids[:, 0] == planted)), 4), "recall_at_k": 1.0})
            print(_row(rows[-1]), flush=True)
        del flat
        if ivf and n >= 100_000:
            faiss.omp_set_num_threads(max(threads))
            cfg = IndexConfig(flat_max=1, nlist=ivf_nlist, nprobe=32, train_max=ivf_train, use_gpu="never")
            index = VectorIndex.build(base, cfg)
            for t in threads:
                faiss.omp_set_num_threads(t)
                res, ids = time_queries(index, q, k, singles)
                recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact_ids, strict=True)]))
                rows.append({"n": n, "index": f"ivf{index.meta()['nlist']},nprobe32", "threads": t,
                             "build_s": round(index.build_seconds, 3), **res,
                             "planted_at_1": round(float(np.mean(ids[:, 0] == planted)), 4),
                             "recall_at_k": round(recall, 4)})
                print(_row(rows[-1]), flush=True)
            del index
        del base
    faiss.omp_set_num_threads(max(threads))
    return rows


def _row(r: dict) -> str:
    return (f"n={r['n']:>9,}  {r['index']:<17} threads={r['threads']}  build {r['build_s']:8.3f}s  "
            f"{r['batch_queries']} queries in one batch {r['batch_s']:8.4f}s ({r['qps']:>9,.1f} q/s)  "
            f"one query {r['single_ms_median']:8.3f} ms (median)  planted@1 {r['planted_at_1']:.3f}  "
            f"recall@k vs exact {r['recall_at_k']:.3f}")


# -- split table ---------------------------------------------------------------------------------------


def bench_splits(targets: list[str], quantiles: list[float]) -> list[dict]:
    from fusionlog.data import system_of
    from fusionlog.embedding import Embedder
    from fusionlog.prepare import prepare
    from router.config import RouterConfig
    from router.router import SemanticRouter

    embedder = Embedder()
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = prepare(name, embedder=embedder, progress=False)
        return cache[name]

    rows = []
    for q in quantiles:
        for target in targets:
            system = system_of(target)
            names = [ds for sys_, ds in SOURCE_BY_SYSTEM.items() if sys_ != system]
            t0 = time.perf_counter()
            router = SemanticRouter(RouterConfig(quantile=q)).fit([get(n) for n in names])
            tgt = get(target)
            result = router.split(tgt.dataset, tgt.vectors)
            seconds = time.perf_counter() - t0
            labels = np.array([s.label for s in tgt.dataset.sessions], dtype=float)  # report only
            g = result.general_mask
            rows.append({
                "quantile": q,
                "target": target,
                "sources": names,
                "sessions": len(result),
                "general": int(g.sum()),
                "proprietary": int((~g).sum()),
                "anomaly_rate_all": round(float(labels.mean()), 4),
                "anomaly_rate_general": round(float(labels[g].mean()), 4) if g.any() else None,
                "anomaly_rate_proprietary": round(float(labels[~g].mean()), 4) if (~g).any() else None,
                "tau_template": result.thresholds.tau_template,
                "tau_session": result.thresholds.tau_session,
                "templates_matched": result.summary()["templates_matched"],
                "templates_used": result.summary()["templates_used"],
                "seconds": round(seconds, 2),
            })
    return rows


def splits_table(rows: list[dict]) -> str:
    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}%"

    lines = [
        "| q | target | sources | sessions | general | proprietary | anomalous: all | general | proprietary "
        "| tau_t | tau_s | known templates |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['quantile']:g} | {r['target']} | {', '.join(r['sources'])} | {r['sessions']} | {r['general']} "
            f"({pct(r['general'] / r['sessions'])}) | {r['proprietary']} | {pct(r['anomaly_rate_all'])} "
            f"| {pct(r['anomaly_rate_general'])} | {pct(r['anomaly_rate_proprietary'])} | {r['tau_template']:.4f} "
            f"| {r['tau_session']:.4f} | {r['templates_matched']}/{r['templates_used']} |"
        )
    return "\n".join(lines)


# -- entry point ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.bench_router", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                   help="indexed vector counts (default 1e4 1e5 1e6)")
    p.add_argument("--queries", type=int, default=100, help="queries per batch timing (default 100)")
    p.add_argument("--blas-threshold", type=int, default=None,
                   help="set faiss.cvar.distance_compute_blas_threshold (batches of at least this many queries use "
                        "BLAS); default: leave faiss's own value")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="faiss OpenMP thread counts to time (default: 1 and all)")
    p.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--ivf", action="store_true", help="also time an IVF index at n >= 1e5 (k-means: minutes)")
    p.add_argument("--ivf-nlist", type=int, default=1024, help="IVF cells for the comparison (0 = automatic)")
    p.add_argument("--ivf-train", type=int, default=50_000, help="IVF training sample (bounds k-means time)")
    p.add_argument("--splits", action="store_true", help="print the split table instead of speed figures")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), help="targets for --splits")
    p.add_argument("--quantiles", type=float, nargs="+", default=[0.95],
                   help="calibration quantiles for --splits (default 0.95, the RouterConfig default)")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.splits:
        rows = bench_splits(args.targets, args.quantiles)
        print(splits_table(rows))
    else:
        print(f"FAISS CPU, {DIM}-d random unit vectors, k={args.k}", flush=True)
        import faiss

        threads = args.threads or sorted({1, faiss.omp_get_max_threads()})
        if args.blas_threshold is not None:
            faiss.cvar.distance_compute_blas_threshold = args.blas_threshold
        print(f"faiss {faiss.__version__}, distance_compute_blas_threshold="
              f"{faiss.cvar.distance_compute_blas_threshold}, threads timed: {threads}", flush=True)
        rows = bench_speed(args.sizes, args.queries, args.k, threads, args.ivf, args.ivf_nlist, args.ivf_train)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
