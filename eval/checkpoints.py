"""Each (method, seed) result of a harness run, saved the moment it finishes.

Why: a full benchmark is 5 methods x 3 seeds of a few minutes each; a crash, a Ctrl-C or a killed
session at the end used to lose all of it. With `fusionlog eval --resume` a rerun with the same settings
reuses every finished (method, seed) and runs only the rest; adding a method or a seed reuses the others.

Layout: `OUT/checkpoints/<method>/seed<N>.npz` (test scores + the method's diagnostic arrays, plain
arrays, no pickle) then `seed<N>.json` (the results.json seed entry and the settings key), written last:
its presence marks a finished run. The key hashes every setting but the method list and the seed count,
so a checkpoint of other settings is never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fusionlog.io import atomic_write_json

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_SCORES = "__scores__"


def settings_key(cfg) -> str:
    """Hash of an `EvalConfig` without its methods and seeds (what may grow between a run and its resume)."""
    d = {k: v for k, v in asdict(cfg).items() if k not in ("methods", "seeds")}
    blob = json.dumps(d, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class SeedResult:
    """What the harness keeps of one (method, seed): the seed entry, the test scores, the diagnostics."""

    entry: dict
    scores: np.ndarray
    arrays: dict[str, np.ndarray]


@dataclass(frozen=True)
class Checkpoints:
    root: Path  # OUT/checkpoints
    key: str

    @classmethod
    def for_run(cls, out_dir: Path, cfg) -> Checkpoints:
        return cls(Path(out_dir) / CHECKPOINT_DIR, settings_key(cfg))

    def _paths(self, method: str, seed: int) -> tuple[Path, Path]:
        folder = self.root / method.replace("/", "_")
        return folder / f"seed{seed}.json", folder / f"seed{seed}.npz"

    def load(self, method: str, seed: int) -> SeedResult | None:
        """The finished result, or None (absent, other settings, or unreadable: then it is run again)."""
        meta_path, npz_path = self._paths(method, seed)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("key") != self.key:
                return None
            with np.load(npz_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("checkpoint %s unreadable (%s): running it again", meta_path, exc)
            return None
        scores = arrays.pop(_SCORES, None)
        if scores is None:
            return None
        return SeedResult(meta["entry"], scores, arrays)

    def save(self, method: str, seed: int, result: SeedResult) -> None:
        meta_path, npz_path = self._paths(method, seed)
        npz_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = npz_path.with_name(f".{npz_path.name}.tmp.npz")
        np.savez_compressed(tmp, **{_SCORES: np.asarray(result.scores, dtype=np.float32)}, **result.arrays)
        tmp.replace(npz_path)
        atomic_write_json(meta_path, {"key": self.key, "method": method, "seed": seed, "entry": result.entry})

    def finished(self) -> int:
        """How many finished results with these settings the folder holds."""
        n = 0
        for meta_path in self.root.glob("*/seed*.json"):
            try:
                n += json.loads(meta_path.read_text(encoding="utf-8")).get("key") == self.key
            except (OSError, ValueError):
                continue
        return n
