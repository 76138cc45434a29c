"""`fusionlog data {list,stats,download}`: what datasets exist and what is in them."""

from __future__ import annotations

import argparse
import json

from fusionlog.commands._common import add_data_args, add_global_flags, rule_from_args, spec_from_args

NAME = "data"
HELP = "list datasets, print their statistics, or download a loghub archive"


def add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="named datasets in the registry")
    st = sub.add_parser("stats", help="counts for one dataset, JSONL file or raw log")
    st.add_argument("source", help="dataset name, .jsonl session file, or raw log file")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    add_data_args(st)
    add_global_flags(st)
    dl = sub.add_parser("download", help="fetch a loghub archive into the data directory (needs internet)")
    dl.add_argument("name", help="loghub system name, e.g. HDFS_v1, BGL, OpenStack")
    dl.add_argument("--data-dir", help="where to put it (default: resolved data dir)")
    dl.add_argument("--timeout", type=float, default=10.0)


def run(args: argparse.Namespace) -> int:
    if args.data_command == "list":
        from fusionlog.data.registry import _REGISTRY

        for name in sorted(_REGISTRY):
            info = _REGISTRY[name]
            print(f"{name:20s} {info.kind:8s} {info.system:12s} {info.description}")
        return 0
    if args.data_command == "download":
        from fusionlog.data.download import download

        path = download(args.name, args.data_dir, timeout=args.timeout)
        print(path)
        return 0
    from fusionlog.data.registry import load_dataset

    spec = spec_from_args(args.source, args)
    ds = load_dataset(args.source, args.data_dir, rule=rule_from_args(args), spec=spec, progress=not args.quiet)
    stats = ds.stats
    out = {
        "system": ds.system,
        "lines": stats.lines if ds.store is not None else sum(len(s.event_ids) for s in ds.sessions),
        "sessions": len(ds.sessions),
        "anomalous_sessions": ds.anomalous if any(s.label is not None for s in ds.sessions) else None,
        "templates": len(ds.templates),
        "skipped_lines": stats.skipped,
        "files": len(spec.files) if spec is not None else None,  # a user's raw logs: how many files were read
        "empty_files": stats.empty_files,
        "truncated_files": stats.truncated_files,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in {**out, "dataset": ds.name, "time_ordered": ds.time_ordered, **stats.to_dict()}.items():
            print(f"{k:20s} {v}")
    return 0
