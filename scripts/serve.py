"""Serve a trained FusionLog detector over HTTP: `python scripts/serve.py --model DIR --port 8000`.

Arguments only; the work is `fusionlog.serving.serve`. The bearer token comes from `--token` or the
FUSIONLOG_TOKEN environment variable (prefer the variable: a command line is visible to other users).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fusionlog.serving import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_LINES, TOKEN_ENV  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="detector artifact folder")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 for all)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--token", default=None, help=f"require this bearer token (default: ${TOKEN_ENV}, else none)")
    ap.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="request size limit")
    ap.add_argument("--max-lines", type=int, default=DEFAULT_MAX_LINES, help="lines + templates per request")
    ap.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    ap.add_argument("--no-access-log", action="store_true", help="do not log every request")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fusionlog.errors import FusionLogError
    from fusionlog.serving import serve

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    try:
        serve(
            args.model, args.host, args.port, token or None, max_body_bytes=args.max_body_bytes,
            max_lines=args.max_lines, log_level=args.log_level, access_log=not args.no_access_log,
        )
    except FusionLogError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
