"""Does detection read raw lines as training did? `python -m eval.served_check [NAME ...] [--out DIR]`.

For each raw-line dataset of the registry (default: all of them): a quick artifact (`fuse`, 2 short epochs,
no LLM round), then its own raw files streamed through `detect_stream` exactly as `fusionlog detect` reads
them, against the in-process detector's scores of the batch sessions. Training parses with a fitted Drain3
store; detection with the served template matcher and the artifact's `serving.json` (format, session rule,
line filter, prefix cut). Any difference between the two paths shows here as a session-key mismatch, a
score difference or a "new template" that training never had. Prints a Markdown table; never asserted
(tests pin the cases that once differed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fusionlog.data.paths import resolve_data_dir
from fusionlog.data.registry import dataset_info, dataset_names, load_dataset

#: Systems with labelled sets; each dataset's artifact trains on the first two that are not its own.
SOURCE_SYSTEMS = ("hdfs", "openstack", "bgl")


def check_one(name: str, out: Path, data_dir: Path) -> dict:
    """Keys and scores of the batch path vs the served path for one dataset."""
    from distill.finetune import FinetuneConfig
    from distill.rounds import DistillConfig
    from fusionlog.detector import Detector
    from fusionlog.pipeline import FuseConfig, fuse
    from fusionlog.served import load_scorer
    from fusionlog.stream import StreamLimits, detect_stream, file_lines

    info = dataset_info(name)
    sources = tuple(s for s in SOURCE_SYSTEMS if s != info.system)[:2]
    t0 = time.perf_counter()
    cfg = FuseConfig(target=name, sources=sources, out=str(out), data_dir=str(data_dir), progress=False,
                     epochs=2, steps_per_epoch=6, distill=DistillConfig(rounds=0, finetune=FinetuneConfig(steps=5)))
    fuse(cfg)
    sessions = load_dataset(name, data_dir, progress=False).sessions
    batch = dict(zip([s.key for s in sessions], Detector.from_pretrained(out).decision_function(sessions),
                     strict=True))
    scorer = load_scorer(out)
    lines = (line for f in info.spec.files for line in file_lines(data_dir / f.path))
    # as `fusionlog detect FILE` reads a file: no idle closing, so it scores like a batch
    served = {v["key"]: v["score"] for v in detect_stream(scorer, lines, StreamLimits(idle_seconds=None))}
    common = batch.keys() & served.keys()
    return {
        "dataset": name,
        "batch_sessions": len(batch),
        "served_sessions": len(served),
        "same_keys": batch.keys() == served.keys(),
        "max_score_diff": max((abs(served[k] - float(batch[k])) for k in common), default=float("nan")),
        "new_template_lines": scorer.matcher.stats.new_lines,
        "masked_matches": scorer.matcher.stats.matched_masked,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="raw-line datasets (default: every one in the registry)")
    ap.add_argument("--out", help="where the quick artifacts go (default: a temporary folder)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    names = args.names or [n for n in dataset_names() if dataset_info(n).kind == "raw"]
    data_dir = resolve_data_dir(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        print("| dataset | sessions (batch / served) | same keys | max score diff | new-template lines "
              "| lines matched only masked | s |")
        print("|---|---|---|---|---|---|---|")
        for name in names:
            r = check_one(name, root / name, data_dir)
            print(f"| {r['dataset']} | {r['batch_sessions']} / {r['served_sessions']} | {r['same_keys']} "
                  f"| {r['max_score_diff']:.1e} | {r['new_template_lines']} | {r['masked_matches']} "
                  f"| {r['seconds']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
