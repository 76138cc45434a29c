"""Parse benchmark: our read → parse → session pipeline vs plain drain3 on the same lines, in one run.

    fusionlog bench parse --system bgl [--repeat 20]

Prints lines/s for both and peak memory (tracemalloc, Python heap) of each. Not a test: figures only.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

from drain3 import TemplateMiner
from drain3.template_miner_config import TemplateMinerConfig

from fusionlog.config import ParseConfig
from fusionlog.data.paths import resolve_data_dir
from fusionlog.data.raw import RawFile, load_raw, read_records
from fusionlog.data.registry import dataset_info
from fusionlog.errors import DataError
from fusionlog.parsing import _miner_config
from fusionlog.types import ReadStats


def _spec_for(system: str, data_dir: Path, repeat: int, workdir: Path):
    """The registered raw spec, pointed at a file holding the system's lines `repeat` times."""
    spec = dataset_info(system).spec
    if spec is None:
        raise DataError(f"{system}: not a raw-line dataset; pick one of bgl, thunderbird, hdfs-2k, <name>-2k")
    src = data_dir / spec.files[0].path
    big = workdir / f"{system}_x{repeat}.log"
    data = src.read_bytes()
    big.write_bytes((data.rstrip(b"\n") + b"\n") * repeat)
    return replace(spec, files=(RawFile(str(big)),))


def run(system: str = "bgl", repeat: int = 20, data_dir: str | None = None, workdir: Path | None = None) -> dict:
    import tempfile

    ddir = resolve_data_dir(data_dir)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fusionlog-bench-"))
    spec = _spec_for(system, ddir, repeat, workdir)
    contents = [r.text for r in read_records(spec, Path("."), ReadStats())]
    n = len(contents)

    def plain(masked: bool):
        cfg = _miner_config(ParseConfig()) if masked else TemplateMinerConfig()
        miner = TemplateMiner(config=cfg)
        for c in contents:
            miner.add_log_message(c)

    def pipeline():
        return load_raw(system, spec, Path("."), progress=False)

    plain_s = _timed(lambda: plain(False))
    plain_masked_s = _timed(lambda: plain(True))
    ours_s = _timed(pipeline)
    ds = pipeline()
    match_s = _timed(lambda: ds.store.transform(contents))
    ids = ds.store.transform(contents)
    plain_peak = _peak(lambda: plain(False))
    ours_peak = _peak(pipeline)
    unseen = sum(1 for i in ids if i < 0)
    return {
        "system": system,
        "lines": n,
        "sessions": len(ds.sessions),
        "templates": len(ds.templates),
        "plain_drain3_add_log_message_lines_per_s": round(n / plain_s),
        "plain_drain3_with_our_masks_lines_per_s": round(n / plain_masked_s),
        "pipeline_read_parse_session_lines_per_s": round(n / ours_s),
        "pipeline_vs_plain": round(plain_s / ours_s, 3),
        "detect_match_lines_per_s": round(n / match_s),
        "unseen_at_match": unseen,
        "peak_mb_plain": round(plain_peak / 2**20, 1),
        "peak_mb_pipeline": round(ours_peak / 2**20, 1),
    }


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _peak(fn) -> int:
    """Peak Python-heap bytes of one call (measured in a separate pass: tracemalloc slows code down)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", default="bgl", help="a raw-line dataset (bgl, thunderbird, hdfs-2k, ...)")
    p.add_argument("--repeat", type=int, default=20, help="repeat the 2k file N times for a stable figure")
    p.add_argument("--data-dir")


def main(args: argparse.Namespace) -> int:
    result = run(args.system, args.repeat, args.data_dir)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    add_args(ap)
    raise SystemExit(main(ap.parse_args()))
