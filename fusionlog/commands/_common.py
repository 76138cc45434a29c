"""Arguments shared by subcommands: where data is, and how to read a user's own raw logs."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from fusionlog.config import MaskRule, SessionRule
from fusionlog.data.logfiles import expand_log_source, is_multi_source, source_system_name
from fusionlog.data.named_formats import NAMED_FORMATS, resolve_log_format, sniff_formats
from fusionlog.data.raw import RawFile, RawSpec
from fusionlog.data.registry import _REGISTRY
from fusionlog.errors import ConfigError


def add_global_flags(p: argparse.ArgumentParser) -> None:
    """-v/-q also after a nested action (`fusionlog data stats X -q`); SUPPRESS keeps top-level values."""
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def positive_int(text: str) -> int:
    """An argparse type: a count of at least 1, refused by argparse under the option's own name."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be 1 or more")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0. Why: float() takes 'nan' (every comparison false, so
    no timeout ever fired) and a poll interval of 0 or less spun a core or raised deep inside the reader."""
    value = _seconds(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a number of seconds above 0")
    return value


def seconds_or_never(text: str) -> float:
    """An argparse type: seconds at or above 0 (0 and inf: never), not nan."""
    value = _seconds(text)
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a number of seconds, 0 or more (0: never)")
    return value


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="data folder (default: $FUSIONLOG_DATA, ./data, ../shared/data)")
    g.add_argument("--log-format", help="raw log format: a name (syslog, zookeeper, hadoop, ...: `fusionlog data "
                   "formats`) or a loghub-style string, '<Date> <Time> <Level> <Component>: <Content>'")
    g.add_argument("--system-config", help="JSON file describing a raw-log system (format, files, session rule)")
    g.add_argument("--system", help="system name for a raw log or JSONL file (default: file name)")
    g.add_argument("--key-regex", help="session key regex for raw logs (group 1 is the key)")
    g.add_argument("--window", type=int, help="sessions of N lines (raw logs; default 20)")
    g.add_argument("--seconds", type=float, help="sessions of S-second time windows (raw logs)")
    g.add_argument("--label-file", help="per-key labels for raw logs (key,label CSV or a list of anomalous keys)")
    g.add_argument("--mask", action="append", default=[], metavar="NAME=REGEX",
                   help="raw logs: replace text matching REGEX by <:NAME:> before Drain clusters it, ahead of the "
                        r"default masks (repeatable; e.g. HOST='([\w-]+\.)+[A-Za-z]+:\d+' for host:port)")


def masks_from_args(args: argparse.Namespace) -> tuple[MaskRule, ...]:
    """--mask NAME=REGEX values as MaskRules (checked when the RawSpec is built)."""
    out = []
    for item in getattr(args, "mask", None) or []:
        name, sep, pattern = item.partition("=")
        if not sep or not name or not pattern:
            raise ConfigError(f"--mask {item!r}: expected NAME=REGEX, e.g. HOST='([\\w-]+\\.)+[A-Za-z]+:\\d+'")
        out.append(MaskRule(pattern, name))
    return tuple(out)


def rule_from_args(args: argparse.Namespace) -> SessionRule | None:
    chosen = [x for x in (args.key_regex, args.window, args.seconds) if x is not None]
    if len(chosen) > 1:
        raise ConfigError("choose one session rule: --key-regex, --window or --seconds")
    if args.key_regex is not None:
        return SessionRule("key", key_pattern=args.key_regex)
    if args.window is not None:
        return SessionRule("lines", window=args.window)
    if args.seconds is not None:
        return SessionRule("time", seconds=args.seconds)
    return None


def spec_from_args(source: str, args: argparse.Namespace) -> RawSpec | None:
    """A RawSpec for a user's raw logs (a file, a directory of files or a glob), or None for named datasets
    and JSONL files."""
    masks = masks_from_args(args)
    if args.system_config:
        spec = RawSpec.from_json_file(Path(args.system_config))
        if Path(source).is_file() or is_multi_source(source):  # the command line wins over the config's list
            spec = dataclasses.replace(spec, files=tuple(RawFile(str(f)) for f in expand_log_source(source)))
        return dataclasses.replace(spec, masks=spec.masks + masks) if masks else spec
    if source.lower() in _REGISTRY or source.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        if masks:
            raise ConfigError(f"{source}: --mask applies to raw log files (a named dataset has its own parsing)")
        return None
    files = expand_log_source(source)
    if args.log_format is None:
        raise ConfigError(f"{source}: not a known dataset or .jsonl file; for a raw log give --log-format NAME or "
                          f"a format string{_format_suggestion(files[0])}, or --system-config")
    log_format, format_masks = resolve_log_format(args.log_format)
    rule = rule_from_args(args) or SessionRule("lines", window=20)
    return RawSpec(
        system=args.system or source_system_name(source, files),
        files=tuple(RawFile(str(f)) for f in files),
        log_format=log_format,
        rule=rule,
        label_mode="key_file" if args.label_file else "none",
        label_file=args.label_file or "",
        masks=format_masks + masks,
    )


def _format_suggestion(path: Path) -> str:
    """For the no-format error: the named formats that read the file's first lines, or the names and an
    example format string when none does."""
    if not path.is_file():
        return " (e.g. '<Date> <Time> <Level> <Component>: <Content>')"
    found = sniff_formats(path)
    if not found:
        return (f" (no named format reads its first lines; names: {', '.join(sorted(NAMED_FORMATS))}; "
                f"e.g. '<Date> <Time> <Level> <Component>: <Content>')")
    shown = ", ".join(f"{name} ({share:.0%})" for name, share in found[:3])
    return f" (named formats that read its first lines: {shown}; `fusionlog data formats {path}` shows them)"
