"""`fusionlog baseline --model DIR FILE...`: count known-good logs into a trained detector's idea of normal."""

from __future__ import annotations

import argparse

NAME = "baseline"
HELP = ("count logs you know to be normal (after a deploy, say) into a trained detector's reference, so what they "
        "do stops being rare; --list, --undo")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="detector artifact folder (written by `fusionlog fuse`)")
    p.add_argument("source", nargs="*",
                   help="known-good raw log file(s), a directory of them or a quoted glob, read as `detect` reads "
                        "them; - for stdin. Failures in them would be learned as normal")
    p.add_argument("--reason", default="", help="why these logs are normal (kept with the batch)")
    p.add_argument("--replace", action="store_true",
                   help="the service changed: these sessions alone are the reference from now on (the training "
                        "pool and earlier batches stop counting); without it they are added to it")
    p.add_argument("--list", action="store_true", help="list the detector's baseline batches")
    p.add_argument("--undo", action="store_true", help="remove the last baseline batch")


def run(args: argparse.Namespace) -> int:
    import logging
    import sys
    from pathlib import Path

    from tqdm.auto import tqdm

    from fusionlog.baseline import BASELINE_NAME, learn_baseline, load_baseline, undo_baseline
    from fusionlog.data.logfiles import expand_log_source
    from fusionlog.errors import ArtifactError, ConfigError, DataError
    from fusionlog.feedback import now_utc
    from fusionlog.served import load_scorer
    from fusionlog.stream import files_lines, read_stream
    from fusionlog.types import ReadStats

    logger = logging.getLogger("fusionlog.baseline")
    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder}: not a detector folder (no config.json); give what `fusionlog fuse` wrote")
    if args.list or args.undo:
        if args.source:
            raise ConfigError("--list and --undo take no log files")
        if args.undo:
            gone, left = undo_baseline(folder)
            print(f"removed the baseline batch of {gone.at} ({gone.sessions} sessions of {gone.source}); "
                  f"{left} left. A running serve or live detect applies it within moments, others when they "
                  f"next load {folder}")
            return 0
        batches = load_baseline(folder)
        if not batches:
            print(f"{folder}: no baseline batches")
        for b in batches:
            print(f"{b.at}  {'replaced the reference with ' if b.replace else ''}{b.sessions} sessions, {b.lines} "
                  f"lines, {len(b.templates)} templates ({b.new_templates} not in the trained table) from {b.source}"
                  + (f"  ({b.reason})" if b.reason else ""))
        return 0
    sources = list(args.source)
    if not sources:
        raise ConfigError("give the known-good log file(s) to learn from (or - for stdin; --list, --undo)")
    stdin = sources == ["-"]
    if "-" in sources and not stdin:
        raise ConfigError("read either stdin (-) or files, not both")
    files = [] if stdin else [f for s in sources for f in expand_log_source(s)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise DataError(f"log file(s) not found: {', '.join(missing[:5])}")
    scorer = load_scorer(folder)
    read_stats = ReadStats()
    raw = (read_stream(sys.stdin.buffer, read_stats, heartbeat=None) if stdin
           else files_lines(files, read_stats, logger))
    lines = tqdm(raw, desc="baseline", unit=" lines", disable=None, mininterval=1.0)
    outcome = learn_baseline(folder, scorer, lines, lambda: load_scorer(folder),
                             source="stdin" if stdin else " ".join(sources), reason=args.reason, at=now_utc(),
                             replace=args.replace, read_stats=read_stats)
    print(f"{outcome.summary()}. Written to {folder / BASELINE_NAME}; a running serve or live detect applies it "
          "within moments; `--undo` removes it")
    for note in outcome.notes(redo="`--undo`, then baseline with --replace",
                              grow="add later known-good logs with `fusionlog baseline` (without --replace)"):
        print(f"note: {note}")
    return 0
