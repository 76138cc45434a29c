"""HTTP benchmark: POST /v1/detect (or /v1/ingest) throughput and latency with 64 concurrent clients on 127.0.0.1.

    fusionlog bench serve [--model DIR] [--requests 2000] [--duration 30] [--concurrency 64] [--lines 20]
                          [--threads 1] [--cache-size 32768] [--endpoint detect|ingest] [--journal DIR]

The service runs in its own process (uvicorn, one worker, the real `fusionlog.serving` app) so the
load generator does not share its interpreter; the clients are a minimal asyncio HTTP/1.1 client, one
keep-alive connection each.
Each request carries `--lines` consecutive raw lines of the dataset's 2k file (sessionized and scored
by the service). The run stops at `--requests` or `--duration` seconds, whichever comes first. Without
`--model`, a `DemoScorer` (eval/bench_detect.py) stands in for the trained detector. Figures only.
The payloads cycle through 64 windows, so with the served score cache (`--cache-size`, 0 = off) nearly
every timed session is a cache hit; the server's hit and miss counters are reported.
With `--endpoint ingest` each client posts to a stream of its own (`?stream=cN`, as one shipper per pod would):
sessions stay open across its requests, so a request's figure counts lines taken, and the sessions scored
are the server's counter (those a window or key finished during the run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _serve_only(args: argparse.Namespace) -> int:
    """Child process: load the scorer, bind 127.0.0.1:0, print the port, serve until SIGTERM."""
    import uvicorn

    from fusionlog.serving import create_app

    if args.model:
        from eval.bench_detect import _load_model

        scorer = _load_model(args.model, args.threads, args.cache_size)
    else:
        from eval.bench_detect import DemoScorer

        scorer = DemoScorer(args.dataset, args.data_dir)
    ingest = None
    if args.journal:
        from fusionlog.ingest import IngestConfig

        ingest = IngestConfig(journal_dir=args.journal, journal_sync=args.journal_sync)
    app = create_app(scorer, token=args.token or None, max_lines=max(20_000, args.lines), ingest=ingest)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=2048)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _payloads(dataset: str, data_dir: str | None, lines: int, n: int = 64) -> list[bytes]:
    from fusionlog.data.paths import resolve_data_dir
    from fusionlog.data.registry import dataset_info
    from fusionlog.stream import file_lines

    spec = dataset_info(dataset).spec
    raw = [ln for ln in file_lines(resolve_data_dir(data_dir) / spec.files[0].path) if ln.strip()]
    step = max(1, (len(raw) - lines) // n)
    return [json.dumps({"lines": raw[i * step:i * step + lines]}).encode() for i in range(n)]


async def _load(port: int, payloads: list[bytes], requests: int, duration: float, concurrency: int,
                token: str | None, warmup: int, endpoint: str = "detect") -> dict:
    """`concurrency` keep-alive connections, each a client sending one request after another.

    A minimal HTTP/1.1 client on asyncio streams: a Python HTTP library costs more CPU per request
    than the service under test, and this benchmark shares the machine with the server.
    """
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    path = f"/v1/{endpoint}"

    def raw_requests(target: str) -> list[bytes]:
        return [(f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
                 f"Content-Length: {len(p)}\r\n\r\n").encode() + p for p in payloads]

    requests_raw = raw_requests(path)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    lines_scored = [0]
    counter = [0]

    async def connect():
        return await asyncio.open_connection("127.0.0.1", port)

    async def exchange(reader, writer, raw: bytes) -> tuple[int, bytes]:
        writer.write(raw)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return status, await reader.readexactly(length)

    reader, writer = await connect()
    warm = raw_requests(f"{path}?stream=c0") if endpoint == "ingest" else requests_raw  # no stream beyond the clients'
    for i in range(warmup):
        await exchange(reader, writer, warm[i % len(warm)])
    writer.close()
    deadline = time.monotonic() + duration

    async def worker(n: int) -> None:
        own = raw_requests(f"{path}?stream=c{n}") if endpoint == "ingest" else requests_raw
        reader, writer = await connect()
        try:
            while counter[0] < requests and time.monotonic() < deadline:
                i = counter[0]
                counter[0] += 1
                t0 = time.perf_counter()
                try:
                    status, body = await exchange(reader, writer, own[i % len(own)])
                    key = str(status)
                    if status == 200:
                        lines_scored[0] += json.loads(body)["stats"]["lines"]
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    key = type(exc).__name__
                    reader, writer = await connect()
                latencies.append(time.perf_counter() - t0)
                statuses[key] = statuses.get(key, 0) + 1
        finally:
            writer.close()

    t_start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    wall = time.perf_counter() - t_start
    reader, writer = await connect()
    get = f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()
    _, metrics_body = await exchange(reader, writer, get)
    writer.close()
    metrics = metrics_body.decode()
    lat = np.asarray(latencies) * 1e3
    server_s = _metric(metrics, f'fusionlog_request_duration_seconds_sum{{path="{path}"}}')
    server_n = _metric(metrics, f'fusionlog_request_duration_seconds_count{{path="{path}"}}')
    return {
        "requests": len(latencies),
        "status": statuses,
        "seconds": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 1),
        "lines_per_s": round(lines_scored[0] / wall),
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2),
            "p90": round(float(np.percentile(lat, 90)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2),
            "max": round(float(lat.max()), 2),
        },
        "server_mean_ms_in_app": round(1e3 * server_s / server_n, 3) if server_s and server_n else None,
        "server_sessions_scored": _metric(metrics, "fusionlog_sessions_scored_total"),
        "server_score_cache_hits": _metric(metrics, "fusionlog_score_cache_hits_total"),
        "server_score_cache_misses": _metric(metrics, "fusionlog_score_cache_misses_total"),
    }


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def run(args: argparse.Namespace) -> dict:
    token = args.token or None
    cmd = [sys.executable, "-m", "eval.bench_serve", "--serve-only", "--dataset", args.dataset,
           "--lines", str(args.lines)]
    if args.model:
        cmd += ["--model", args.model]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.journal:
        Path(args.journal).mkdir(parents=True, exist_ok=True)
        cmd += ["--journal", args.journal, *(["--journal-sync"] if args.journal_sync else [])]
    for flag, value in (("--threads", args.threads), ("--cache-size", args.cache_size)):
        if value is not None:
            cmd += [flag, str(value)]
    env = dict(os.environ)
    if token:
        cmd += ["--token", token]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"server did not start (exit code {proc.poll()}): {line!r}")
        port = int(line.split()[1])
        _wait_ready(port, timeout=120)
        startup = time.perf_counter() - t0
        payloads = _payloads(args.dataset, args.data_dir, args.lines)
        result = asyncio.run(_load(port, payloads, args.requests, args.duration, args.concurrency, token,
                                   args.warmup, args.endpoint))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "scorer": f"load_scorer({args.model})" if args.model else f"DemoScorer({args.dataset})",
        "endpoint": f"/v1/{args.endpoint}",
        "journal": args.journal,
        "journal_sync": bool(args.journal_sync),
        "concurrency": args.concurrency,
        "lines_per_request": args.lines,
        "limit": {"requests": args.requests, "seconds": args.duration},
        "server": "uvicorn, 1 worker, 127.0.0.1, separate process",
        "server_startup_s": round(startup, 2),
        **result,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _wait_ready(port: int, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} not healthy after {timeout} s")
        time.sleep(0.1)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="detector artifact folder (default: a DemoScorer fitted on --dataset)")
    p.add_argument("--dataset", default="hdfs-2k", help="raw-line dataset for payloads and the demo scorer")
    p.add_argument("--requests", type=int, default=2000, help="stop after this many requests (default 2000)")
    p.add_argument("--duration", type=float, default=30.0, help="or after this many seconds (default 30)")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent clients (default 64)")
    p.add_argument("--lines", type=int, default=20, help="raw lines per request (default 20)")
    p.add_argument("--warmup", type=int, default=20, help="requests sent before timing")
    p.add_argument("--endpoint", choices=["detect", "ingest"], default="detect",
                   help="detect: each request scored alone; ingest: a stream per client, sessions kept open")
    p.add_argument("--token", default=None, help="run the service with this bearer token")
    p.add_argument("--threads", type=int, help="--model only: torch threads while scoring (0 = torch's default)")
    p.add_argument("--cache-size", type=int, help="--model only: score cache entries (0 = no cache)")
    p.add_argument("--data-dir")
    p.add_argument("--journal", metavar="DIR", help="--endpoint ingest: the service journals each stream's lines in "
                                                     "DIR (serve --journal)")
    p.add_argument("--journal-sync", action="store_true", help="--journal: each post synced to disk (serve "
                                                               "--journal-sync)")
    p.add_argument("--serve-only", action="store_true", help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    if args.serve_only:
        return _serve_only(args)
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    add_args(ap)
    raise SystemExit(main(ap.parse_args()))
