"""The `fusionlog` console command.

Each subcommand lives in its own module under `fusionlog/commands/` and defines NAME, HELP,
`add_args(parser)` and `run(args) -> int`. Commands import heavy libraries inside `run`, so
`fusionlog --help` stays instant. Expected failures (FusionLogError) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

import fusionlog.commands as commands_pkg
from fusionlog import __version__
from fusionlog.commands._common import add_global_flags
from fusionlog.errors import FusionLogError

logger = logging.getLogger("fusionlog")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionlog", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fusionlog {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"fusionlog.commands.{info.name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        add_global_flags(p)
        mod.add_args(p)
        p.set_defaults(_run=mod.run)
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("drain3", "sentence_transformers", "transformers", "httpx", "faiss"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    try:
        return int(args._run(args) or 0)
    except FusionLogError as exc:
        print(f"fusionlog {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fusionlog {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`fusionlog detect ... | head`): stop quietly, as `cat` does
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by it
    except OSError as exc:
        # the machine said no (a full disk, a folder removed or made read-only mid-run): one line, not a traceback
        logging.getLogger("fusionlog").debug("%s failed", args.command, exc_info=True)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"fusionlog {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's exit-time flush does not raise on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
