"""`fusionlog data {list,stats,formats,download}`: what datasets exist, what is in them, how to read a log."""

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
    fm = sub.add_parser("formats", help="named log formats (--log-format NAME); with a log file: which of them "
                                        "read its first lines")
    fm.add_argument("file", nargs="?", help="a log file (plain or gzip) to try every named format on")
    fm.add_argument("--lines", type=int, default=200, help="how many non-empty lines to try (default 200)")
    add_global_flags(fm)
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
    if args.data_command == "formats":
        return _formats(args)
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


def _formats(args: argparse.Namespace) -> int:
    """Every named format; with a file, the share of its first lines each reads, best first."""
    from pathlib import Path

    from fusionlog.data.formats import is_structured_format
    from fusionlog.data.named_formats import NAMED_FORMATS, resolve_log_format, sniff_formats
    from fusionlog.data.readers import iter_lines
    from fusionlog.errors import ConfigError

    if args.file is None:
        for name in sorted(NAMED_FORMATS):
            nf = NAMED_FORMATS[name]
            # a format read by a function of its own says nothing by its string: say what it reads
            print(f"{name:16s} {nf.about if is_structured_format(nf.log_format) else nf.log_format}")
        return 0
    if args.lines < 1:
        raise ConfigError(f"--lines {args.lines}: give at least 1")
    path = Path(args.file)
    for _ in iter_lines(path):  # a missing, empty or unreadable file: its own clear error, not "no format reads it"
        break
    shares = sniff_formats(path, max_lines=args.lines, min_share=0.0)
    read = [(name, share) for name, share in shares if share > 0]
    if not read:
        print(f"no named format reads any of the first {args.lines} lines of {path}; write a format string "
              f"(README: Your own logs)")
        return 0
    for name, share in read:
        print(f"{share:6.1%}  {name:16s} {resolve_log_format(name)[0]}")
    return 0
