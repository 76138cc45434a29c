"""`python -m eval ...`: the `fusionlog eval` command on its own (no other subcommand is imported).

Useful where only the benchmark's dependencies are installed (e.g. a GPU box with prepared data).
"""

from __future__ import annotations

import argparse
import logging
import sys

from fusionlog.commands import eval as eval_command
from fusionlog.errors import FusionLogError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description=eval_command.HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    eval_command.add_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return eval_command.run(args)
    except FusionLogError as exc:
        print(f"python -m eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
