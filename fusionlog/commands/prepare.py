"""`fusionlog prepare`: parse, sessionize and embed a dataset into the prepared-data cache."""

from __future__ import annotations

import argparse
import json

from fusionlog.commands._common import add_data_args, rule_from_args, spec_from_args

NAME = "prepare"
HELP = "parse, sessionize and embed a dataset once (cached; a second run is instant)"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="dataset name, .jsonl session file, or raw log file")
    p.add_argument("--target", dest="source_opt", help="same as SOURCE")
    p.add_argument("--cache-dir", help="prepared-data folder (default: $FUSIONLOG_CACHE/prepared)")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache is valid")
    add_data_args(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fusionlog.errors import ConfigError
    from fusionlog.prepare import prepare

    source = args.source or args.source_opt or args.system
    if not source:
        raise ConfigError("give a dataset: `fusionlog prepare openstack` (see `fusionlog data list`)")
    prepared = prepare(
        source, args.data_dir, rule=rule_from_args(args), spec=spec_from_args(source, args),
        root=Path(args.cache_dir) if args.cache_dir else None, progress=not args.quiet, force=args.force,
    )
    summary = dict(prepared.dataset.summary(), cached=prepared.from_cache, path=str(prepared.path))
    summary["skipped_lines"] = prepared.dataset.stats.skipped
    print(json.dumps(summary))
    return 0
