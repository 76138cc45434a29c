"""A FAISS index over L2-normalised vectors: exact inner product up to `flat_max` vectors, IVF beyond.

This module is the only place that touches faiss, so faiss API changes (or a GPU build's quirks) stay
here. Inner product on unit vectors is cosine similarity, so every score this index returns is a cosine
in [-1, 1]; a missing neighbour (fewer than k vectors indexed) comes back as id -1 with score -1.

Persistence is `faiss.write_index` (FAISS's own binary format, no pickle) plus a JSON sidecar with the
build settings, written atomically; `load` checks that the two agree.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import faiss
import numpy as np

from fusionlog.config import config_from_dict
from fusionlog.constants import FORMAT_VERSION
from fusionlog.errors import ArtifactError, ConfigError, DataError
from fusionlog.io import atomic_write_json, publish_mode
from router.config import IndexConfig

logger = logging.getLogger(__name__)

#: Score given to a padded result slot (no neighbour): the lowest possible cosine.
NO_NEIGHBOUR = -1.0
NORM_TOLERANCE = 1e-3
SEARCH_BATCH = 16_384


@lru_cache(maxsize=1)
def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one CUDA device."""
    if not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return faiss.get_num_gpus() > 0
    except Exception:  # a GPU build without a usable driver
        return False


@lru_cache(maxsize=1)
def _gpu_resources():  # one allocator for every index: each StandardGpuResources reserves GPU scratch memory
    return faiss.StandardGpuResources()


def auto_nlist(n: int, train_max: int) -> int:
    """About 4*sqrt(n) IVF cells (FAISS's guideline), capped so each cell gets >= 39 training points."""
    cap = max(1, min(n, train_max) // 39)
    return int(max(1, min(65_536, int(4 * math.sqrt(n)), cap)))


def check_unit_vectors(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Return a C-contiguous float32 (n, d) copy-or-view, refusing rows that are not unit length.

    Why refuse rather than normalise: a non-unit row means the caller mixed up vector spaces or passed
    raw model outputs, and cosine thresholds computed on it would be silently wrong.
    """
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise DataError(f"{what}: expected a 2-D array (n, dim), got shape {arr.shape}")
    if arr.shape[0] and not np.isfinite(arr).all():
        raise DataError(f"{what}: contains NaN or infinite values")
    if arr.shape[0]:
        norms = np.linalg.norm(arr, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
        if bad.size:
            raise DataError(
                f"{what}: {bad.size} row(s) are not L2-normalised (row {bad[0]} has norm {norms[bad[0]]:.4f})"
            )
    return arr


class VectorIndex:
    """Nearest neighbours by cosine over unit vectors; rows are numbered 0..ntotal-1 in insertion order.

    Build with `VectorIndex.build(vectors, config)`; the caller keeps its own row -> meaning map.
    """

    def __init__(self, index: faiss.Index, config: IndexConfig, kind: str, dim: int, on_gpu: bool) -> None:
        self.index = index
        self.config = config
        self.kind = kind  # "flat" or "ivf"
        self.dim = dim
        self.on_gpu = on_gpu
        self.build_seconds = 0.0

    # -- build -----------------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig | None = None, dim: int | None = None) -> VectorIndex:
        """Index `vectors` (n, d); `dim` is needed only when n == 0 (an empty index still answers queries)."""
        config = config or IndexConfig()
        t0 = time.perf_counter()
        arr = check_unit_vectors(vectors)
        n, d = arr.shape
        if dim is not None and n == 0:
            d = dim
        elif dim is not None and dim != d:
            raise DataError(f"vectors have dimension {d}, expected {dim}")
        if d <= 0:
            raise DataError("cannot build an index of dimension 0 (pass dim= for an empty index)")
        if n > config.flat_max:
            cpu, kind = _build_ivf(arr, config), "ivf"
        else:
            cpu, kind = faiss.IndexFlatIP(d), "flat"
            if n:
                cpu.add(arr)
        index, on_gpu = _maybe_to_gpu(cpu, config)
        out = cls(index, config, kind, d, on_gpu)
        out.build_seconds = time.perf_counter() - t0
        logger.debug("built %s index: %d x %d in %.2fs (gpu=%s)", kind, n, d, out.build_seconds, on_gpu)
        return out

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    # -- query -----------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, batch_size: int = SEARCH_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """Return (similarities (m, k) float32, row ids (m, k) int64), best first; padded with -1 / -1.

        Queries go in batches so a million-row query set never needs one giant distance buffer.
        """
        if k < 1:
            raise ConfigError(f"search k={k}: must be >= 1")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DataError(f"queries: expected shape (m, {self.dim}), got {np.shape(queries)}")
        m = q.shape[0]
        sims = np.full((m, k), NO_NEIGHBOUR, dtype=np.float32)
        ids = np.full((m, k), -1, dtype=np.int64)
        kk = min(k, self.ntotal)
        if kk == 0 or m == 0:
            return sims, ids
        for lo in range(0, m, batch_size):
            d, i = self.index.search(q[lo: lo + batch_size], kk)
            sims[lo: lo + batch_size, :kk] = d
            ids[lo: lo + batch_size, :kk] = i
        missing = ids < 0  # IVF may find fewer than kk when nprobe cells hold few vectors
        sims[missing] = NO_NEIGHBOUR
        np.clip(sims, -1.0, 1.0, out=sims)  # float32 dot products of unit vectors can read 1.0000001
        return sims, ids

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write `path` (faiss binary) and `path.with_suffix('.json')` (settings); both atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cpu = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            faiss.write_index(cpu, tmp)
            publish_mode(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        atomic_write_json(sidecar_path(path), self.meta())

    def meta(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "ntotal": self.ntotal,
            "metric": "inner_product",
            "nlist": int(getattr(_cpu_view(self), "nlist", 0)),
            "faiss_version": faiss.__version__,
            "config": asdict(self.config),
        }

    @classmethod
    def load(cls, path: Path, use_gpu: str | None = None) -> VectorIndex:
        """Read an index written by `save`; `use_gpu` overrides the saved setting (e.g. 'never' on CPU hosts)."""
        path = Path(path)
        side = sidecar_path(path)
        for p in (path, side):
            if not p.is_file():
                raise ArtifactError(f"{p}: missing (a router index needs both the .faiss file and its .json)")
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            config = config_from_dict(IndexConfig, meta["config"])
            cpu = faiss.read_index(str(path))
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{path}: cannot read index: {exc}") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{side}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
        if cpu.ntotal != meta["ntotal"] or cpu.d != meta["dim"]:
            raise ArtifactError(
                f"{path}: holds {cpu.ntotal} x {cpu.d} vectors but {side.name} says {meta['ntotal']} x {meta['dim']}"
            )
        if use_gpu is not None:
            config = IndexConfig(**{**asdict(config), "use_gpu": use_gpu})
        if meta["kind"] == "ivf":
            faiss.extract_index_ivf(cpu).nprobe = config.nprobe
        index, on_gpu = _maybe_to_gpu(cpu, config)
        return cls(index, config, meta["kind"], int(meta["dim"]), on_gpu)


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def _cpu_view(vi: VectorIndex):
    if vi.kind != "ivf":
        return vi.index
    cpu = faiss.index_gpu_to_cpu(vi.index) if vi.on_gpu else vi.index
    return faiss.extract_index_ivf(cpu)


def _build_ivf(arr: np.ndarray, config: IndexConfig) -> faiss.Index:
    """IVF-Flat with inner product, trained on a seeded sample so the same vectors give the same index."""
    n, d = arr.shape
    nlist = min(config.nlist or auto_nlist(n, config.train_max), n)  # k-means needs at least one point per cell
    index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = config.seed
    ivf.cp.spherical = True  # unit-norm centroids suit cosine search
    rng = np.random.default_rng(config.seed)
    train = arr if n <= config.train_max else arr[np.sort(rng.choice(n, config.train_max, replace=False))]
    index.train(train)
    index.add(arr)
    ivf.nprobe = config.nprobe
    return index


def _maybe_to_gpu(cpu: faiss.Index, config: IndexConfig) -> tuple[faiss.Index, bool]:
    if config.use_gpu == "never":
        return cpu, False
    if not gpu_available():
        if config.use_gpu == "always":
            raise ConfigError("IndexConfig.use_gpu='always' but this faiss build has no GPU support or sees no GPU")
        return cpu, False
    gpu = faiss.index_cpu_to_gpu(_gpu_resources(), 0, cpu)
    if isinstance(cpu, faiss.IndexIVF):
        faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", config.nprobe)
    return gpu, True
