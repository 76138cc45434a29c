"""Speed of the general path: training time for one target and scoring throughput (printed, never asserted).

Self-contained on purpose: it needs only torch, numpy, safetensors, this repo and *prepared* data
folders (from `fusionlog prepare`), so it runs on a machine without drain3 or the embedding model, e.g.
a GPU box:

    python -m eval.bench_model --target openstack                       # CPU, default settings
    fusionlog bench model --target openstack                            # the same
    python -m eval.bench_model --target openstack --device cuda --prepared-dir .bench_data --anchors a.npy

Figures: `train_seconds` (general method: meta-learning + discriminator, default TrainConfig),
`score_sessions_per_s` end to end (encode + deduplicate + model) over all of the target's sessions, and
`model_inputs_per_s` (forward passes only, over the distinct inputs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from eval.figures import report_figures, standalone
from fusionlog.types import Session

# torch and the trainer are imported inside main(): `fusionlog bench` imports every eval/bench_*.py to
# build its parser, and `fusionlog --help` must stay instant.

#: The other-system source of each target (mirrors eval.protocol, kept here so this file stands alone).
SYSTEM = {"hdfs": "hdfs", "hdfs-100k": "hdfs", "openstack": "openstack", "hadoop": "hadoop", "bgl": "bgl"}
DEFAULT_SOURCES = ("hdfs", "openstack", "hadoop", "bgl")


def find_prepared(root: Path, name: str) -> Path:
    """The newest prepared folder under `root` whose meta.json names dataset `name`."""
    from fusionlog.prepare import newest_prepared

    folder = newest_prepared(root, name)
    if folder is None:
        sys.exit(f"bench_model: no prepared folder for {name!r} under {root}; run `fusionlog prepare {name}` first")
    return folder


def load_prepared_folder(folder: Path) -> tuple[str, np.ndarray, list[Session]]:
    """(system, vectors, sessions) straight from a prepared folder; no drain3 or embedder needed."""
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    system = meta["system"]
    vectors = np.load(folder / "vectors.npy", allow_pickle=False)
    with open(folder / "sessions.jsonl", encoding="utf-8") as fh:
        sessions = [Session.from_dict(system, json.loads(line)) for line in fh]
    return system, vectors, sessions


def anchor_vectors(path: str | None, dim: int) -> tuple[np.ndarray, str]:
    """Anchor embeddings from a .npy, else the embedder, else random unit vectors (timing is unaffected)."""
    from fusionlog.model import ANCHOR_TEXTS

    if path:
        return np.load(path, allow_pickle=False).astype(np.float32), f"file {path}"
    try:
        from fusionlog.detector import embed_anchors

        return embed_anchors(), "embedder"
    except Exception as exc:  # noqa: BLE001 - any failure: fall back, the timing does not depend on values
        rng = np.random.default_rng(0)
        v = rng.normal(size=(len(ANCHOR_TEXTS), dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True), f"random (embedder unavailable: {type(exc).__name__})"


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--target", default="openstack")
    ap.add_argument("--sources", nargs="+", help="default: one labelled set per other system")
    ap.add_argument("--prepared-dir", help="folder of prepared datasets (default: $FUSIONLOG_CACHE/prepared)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--meta-order", choices=("first", "second"), default=None)
    ap.add_argument("--epochs", type=int, default=None, help="override TrainConfig.epochs")
    ap.add_argument("--score-batch", type=int, default=512, help="sessions per forward pass when scoring")
    ap.add_argument("--score-repeats", type=int, default=3)
    ap.add_argument("--anchors", help=".npy of the anchor embeddings (else the embedder, else random)")
    ap.add_argument("--json", help="also write the figures to this JSON file")


def main(args: argparse.Namespace) -> int:
    import torch

    from fusionlog.model import SessionModelConfig, encode_sessions, make_batch
    from fusionlog.training.config import TrainConfig
    from fusionlog.training.data import SystemData
    from fusionlog.training.loop import train_model

    root = Path(args.prepared_dir) if args.prepared_dir else (
        Path(os.environ.get("FUSIONLOG_CACHE", Path.home() / ".cache" / "fusionlog")) / "prepared"
    )
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    sources = args.sources or [s for s in DEFAULT_SOURCES if SYSTEM[s] != SYSTEM.get(args.target, args.target)]
    mc = SessionModelConfig()
    cfg = replace(TrainConfig(), device=str(device), threads=args.threads)
    if args.meta_order:
        cfg = replace(cfg, meta_order=args.meta_order)
    if args.epochs:
        cfg = replace(cfg, epochs=args.epochs)

    t0 = time.perf_counter()
    src_data = []
    for name in sources:
        system, vectors, sessions = load_prepared_folder(find_prepared(root, name))
        src_data.append(SystemData.build(name, system, vectors, sessions, mc.max_len, True, device,
                                        trim=mc.trim_reference))
    system, vectors, sessions = load_prepared_folder(find_prepared(root, args.target))
    cut = int(round(0.6 * len(sessions)))
    pool = [Session(s.system, s.key, s.event_ids, None) for s in sessions[:cut]]
    tgt = SystemData.build(args.target, system, vectors, pool, mc.max_len, False, device, trim=mc.trim_reference)
    encode_seconds = time.perf_counter() - t0
    anchors, anchor_note = anchor_vectors(args.anchors, vectors.shape[1])

    if device.type == "cuda":
        torch.cuda.synchronize()
    result = train_model(src_data, tgt, mc, cfg, anchors)
    if device.type == "cuda":
        torch.cuda.synchronize()
    model = result.model.to(device).eval()
    vec_t = tgt.vectors

    unlabelled = [Session(s.system, s.key, s.event_ids, None) for s in sessions]
    end_to_end, model_only = [], []
    for _ in range(args.score_repeats):
        ts = time.perf_counter()
        enc = encode_sessions(unlabelled, tgt.stats, mc.max_len, in_corpus=False)
        order = np.argsort([len(x) for x in enc.ids], kind="stable")
        batches = [make_batch(enc, order[i : i + args.score_batch], vec_t, device)
                   for i in range(0, len(order), args.score_batch)]
        tm = time.perf_counter()
        with torch.inference_mode():
            outs = [model(b.x, b.mask, b.session_features).logits for b in batches]
            if device.type == "cuda":
                torch.cuda.synchronize()
            _ = torch.cat(outs).cpu()
        te = time.perf_counter()
        end_to_end.append(te - ts)
        model_only.append(te - tm)
    n_groups = len(enc)
    figures = {
        "target": args.target,
        "sources": sources,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "cpu_threads": args.threads,
        "host": platform.node(),
        "torch": torch.__version__,
        "train_seconds": round(result.seconds, 2),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "encode_seconds": round(encode_seconds, 2),
        "train_config": asdict(cfg),
        "scored_sessions": len(sessions),
        "distinct_inputs": n_groups,
        "score_seconds": round(min(end_to_end), 4),
        "score_sessions_per_s": round(len(sessions) / min(end_to_end), 1),
        "model_seconds": round(min(model_only), 4),
        "model_inputs_per_s": round(n_groups / min(model_only), 1),
        "anchors": anchor_note,
    }
    report_figures(figures, args.json, hide=("train_config",))
    return 0


def cli(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
