"""`fusionlog serve --model DIR [--port 8000] [--token T]`: the HTTP service over a trained detector."""

from __future__ import annotations

import argparse

NAME = "serve"
HELP = ("serve a trained detector over HTTP (POST /v1/detect, POST /v1/ingest for a log shipper, GET /healthz, GET "
        "/metrics, OpenAPI at /docs; POST /v1/mute with --allow-mute, POST /v1/baseline with --allow-baseline; "
        "POST /v1/reload or SIGHUP loads the model folder again)")


def add_args(p: argparse.ArgumentParser) -> None:
    from fusionlog.serving import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_LINES, TOKEN_ENV

    p.add_argument("--model", required=True, help="detector artifact folder (written by `fusionlog fuse`)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port; the log says which)")
    p.add_argument("--token", default=None,
                   help=f"require this bearer token (default: ${TOKEN_ENV}, else none; prefer the variable: "
                        "a command line is visible to other users)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="request size limit")
    p.add_argument("--max-lines", type=int, default=DEFAULT_MAX_LINES, help="lines + templates per request")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="the web server's log level")
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    p.add_argument("--allow-mute", action="store_true",
                   help="also take POST /v1/mute and /v1/unmute (as `fusionlog mute`: they write the model folder's "
                        "feedback.json); needs a token")
    p.add_argument("--allow-baseline", action="store_true",
                   help="also take POST /v1/baseline and /v1/baseline/undo (known-good lines, as `fusionlog "
                        "baseline`: they write the model folder's baseline.json); needs a token")
    g = p.add_argument_group("POST /v1/ingest (a shipper's batches; sessions stay open across requests)")
    g.add_argument("--verdicts", metavar="PATH",
                   help="append every ingest verdict to this JSONL file (anomalous ones are also logged as warnings)")
    g.add_argument("--anomalies-only", action="store_true", help="--verdicts gets only anomalous sessions")
    g.add_argument("--examples", action="store_true",
                   help="ingest verdicts name the first raw line of each top template and has/new departure")
    g.add_argument("--idle-seconds", type=float, default=3_600.0,
                   help="key sessions close after this much log time without a line; 0 = never (default 3600)")
    g.add_argument("--wall-idle-seconds", type=float, default=30.0,
                   help="any session closes after this much wall time without a line; 0 = never (default 30)")
    g.add_argument("--max-streams", type=int, default=64, help="ingest streams open at most (default 64)")
    g.add_argument("--max-open-sessions", type=int, default=10_000,
                   help="open sessions per stream; the least recently updated is scored early (default 10000)")
    g.add_argument("--journal", metavar="DIR",
                   help="write each stream's lines to a journal in DIR before reading them, so a crash (kill -9, the "
                        "OOM killer) loses no open session: the next serve with this DIR replays them")
    g.add_argument("--journal-sync", action="store_true",
                   help="--journal: sync each post's lines to disk before reading them (a power loss loses none "
                        "either; costs a disk flush per post)")


def _journal_dir(folder: str | None) -> str | None:
    from pathlib import Path

    from fusionlog.errors import ConfigError

    if folder is None:
        return None
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--journal {folder}: cannot create it ({exc})") from None
    return folder


def run(args: argparse.Namespace) -> int:
    import os

    from fusionlog.ingest import IngestConfig
    from fusionlog.serving import TOKEN_ENV, serve

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    ingest = IngestConfig(verdicts_path=args.verdicts, anomalies_only=args.anomalies_only, examples=args.examples,
                          max_streams=args.max_streams,
                          idle_seconds=args.idle_seconds or None, wall_idle_seconds=args.wall_idle_seconds or None,
                          max_open_sessions=args.max_open_sessions, journal_dir=_journal_dir(args.journal),
                          journal_sync=args.journal_sync)
    serve(args.model, args.host, args.port, token or None, max_body_bytes=args.max_body_bytes,
          max_lines=args.max_lines, log_level=args.log_level, access_log=not args.no_access_log,
          allow_mute=args.allow_mute, allow_baseline=args.allow_baseline, ingest=ingest)
    return 0
