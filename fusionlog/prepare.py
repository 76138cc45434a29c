"""Prepared-data cache: sessions + templates + template vectors for one dataset, computed once.

Why: parsing and embedding are the slow, repeatable part of every run. A prepared folder is keyed by a
hash of everything that could change its content (dataset, data files' sizes and times, parse settings,
session rule, embedding model), so a changed setting gets a new folder and a second run loads in
milliseconds. Folders are written under a temp name and renamed, so an interrupted run leaves nothing
half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusionlog.config import EmbedConfig, ParseConfig, SessionRule, config_to_dict
from fusionlog.constants import (
    FORMAT_VERSION,
    PREPARE_META_NAME,
    READ_VERSION,
    SESSIONS_NAME,
    TEMPLATES_NAME,
    VECTORS_NAME,
)
from fusionlog.data.paths import resolve_data_dir
from fusionlog.data.raw import RawSpec
from fusionlog.data.registry import _REGISTRY, load_dataset
from fusionlog.embedding import Embedder, cache_dir
from fusionlog.errors import ArtifactError
from fusionlog.io import atomic_save_npy, atomic_write_json, load_npy, replace_dir
from fusionlog.parsing import TemplateStore
from fusionlog.types import ReadStats, Session, SessionDataset

logger = logging.getLogger(__name__)

STORE_NAME = "drain_state.json"


@dataclass
class PreparedDataset:
    """A dataset plus one unit vector per template (row i = template i)."""

    dataset: SessionDataset
    vectors: np.ndarray  # (n_templates, dim) float32, L2-normalised
    path: Path | None = None
    from_cache: bool = False
    meta: dict = field(default_factory=dict)


def prepare(
    name_or_path: str,
    data_dir: str | Path | None = None,
    parse: ParseConfig | None = None,
    rule: SessionRule | None = None,
    spec: RawSpec | None = None,
    embed: EmbedConfig | None = None,
    embedder: Embedder | None = None,
    root: Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> PreparedDataset:
    """Load from the cache when the key matches, otherwise read → parse → sessionize → embed → save."""
    parse = parse or ParseConfig()
    embed = embed or (embedder.config if embedder else EmbedConfig())
    key = cache_key(name_or_path, data_dir, parse, rule, spec, embed)
    root = Path(root) if root is not None else cache_dir() / "prepared"
    folder = root / f"{_slug(name_or_path)}-{key}"
    if folder.is_dir() and not force:
        try:
            prepared = load_prepared(folder)
            prepared.from_cache = True
            return prepared
        except ArtifactError as exc:
            logger.warning("prepared cache %s unreadable (%s); rebuilding", folder, exc)
    t0 = time.perf_counter()
    dataset = load_dataset(name_or_path, data_dir, parse, rule, spec, progress)
    embedder = embedder or Embedder(embed)
    vectors = embedder.encode(dataset.templates, show_progress_bar=progress and len(dataset.templates) > 256)
    meta = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "source": name_or_path,
        "summary": dataset.summary(),
        "stats": dataset.stats.to_dict(),
        "description": dataset.description,
        "parse": config_to_dict(parse),
        "rule": config_to_dict(rule) if rule else None,
        "embed": config_to_dict(embed),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    save_prepared(folder, dataset, vectors, meta)
    return PreparedDataset(dataset, vectors, folder, False, meta)


def cache_key(name_or_path, data_dir, parse, rule, spec, embed) -> str:
    parts: dict = {
        "v": FORMAT_VERSION,
        "source": name_or_path,
        "parse": config_to_dict(parse),
        "rule": config_to_dict(rule) if rule else None,
        "spec": repr(spec) if spec else None,
        "embed": config_to_dict(embed),
    }
    if spec is not None or Path(name_or_path).is_file() or _is_raw(name_or_path):
        parts["read"] = READ_VERSION  # only for raw lines, so session datasets keep their cached folders
    if name_or_path.lower() in _REGISTRY:
        parts["data_dir"] = str(resolve_data_dir(data_dir).resolve())
        masks = getattr(_REGISTRY[name_or_path.lower()].spec, "masks", ())
        if masks:  # only where present, so other datasets keep their cached folders
            parts["masks"] = [config_to_dict(m) for m in masks]
    files = [Path(name_or_path)] + ([Path(f.path) for f in spec.files] if spec else [])
    parts["files"] = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _is_raw(name: str) -> bool:
    info = _REGISTRY.get(name.lower())
    return info is not None and info.kind == "raw"


def save_prepared(folder: Path, dataset: SessionDataset, vectors: np.ndarray, meta: dict) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with open(tmp / SESSIONS_NAME, "w", encoding="utf-8") as fh:
            for s in dataset.sessions:
                fh.write(json.dumps(s.to_dict()) + "\n")
        atomic_write_json(tmp / TEMPLATES_NAME, {"system": dataset.system, "templates": dataset.templates})
        atomic_save_npy(tmp / VECTORS_NAME, vectors.astype(np.float32))
        if dataset.store is not None:
            dataset.store.save(tmp / STORE_NAME)
        full_meta = dict(meta, name=dataset.name, system=dataset.system, time_ordered=dataset.time_ordered)
        atomic_write_json(tmp / PREPARE_META_NAME, full_meta)  # written last: its presence marks completion
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def newest_prepared(root: Path, name: str) -> Path | None:
    """The newest prepared folder under `root` whose meta.json names dataset `name` (None: there is none).

    For machines that get prepared folders copied in (a GPU box without the raw data or the embedder).
    """
    hits = []
    for meta in Path(root).glob(f"*/{PREPARE_META_NAME}"):
        try:
            if json.loads(meta.read_text(encoding="utf-8")).get("name") == name:
                hits.append(meta.parent)
        except ValueError:
            continue
    return max(hits, key=lambda p: p.stat().st_mtime) if hits else None


def load_prepared(folder: Path) -> PreparedDataset:
    meta_path = folder / PREPARE_META_NAME
    if not meta_path.exists():
        raise ArtifactError(f"{folder}: no {PREPARE_META_NAME} (incomplete prepare)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{folder}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
        templates = json.loads((folder / TEMPLATES_NAME).read_text(encoding="utf-8"))["templates"]
        system = meta["system"]
        with open(folder / SESSIONS_NAME, encoding="utf-8") as fh:
            sessions = [Session.from_dict(system, json.loads(line)) for line in fh]
        vectors = load_npy(folder / VECTORS_NAME)
        store = TemplateStore.load(folder / STORE_NAME) if (folder / STORE_NAME).exists() else None
    except (OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{folder}: cannot read prepared data: {exc}") from exc
    stats = ReadStats(**{k: v for k, v in meta.get("stats", {}).items() if k != "skipped"})
    dataset = SessionDataset(
        meta["name"], system, templates, sessions, meta["time_ordered"], stats, meta.get("description", ""),
        store=store,
    )
    if vectors.shape[0] != len(templates):
        raise ArtifactError(f"{folder}: {vectors.shape[0]} vectors for {len(templates)} templates")
    return PreparedDataset(dataset, vectors, folder, True, meta)


def _slug(name: str) -> str:
    base = Path(name).name if ("/" in name or "\\" in name) else name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:60]
