"""SQLite cache of LLM answers, so a rerun or a crash never pays for the same call twice.

The key is a hash of everything that could change the answer: backend kind, model identity (the
GGUF checksum, adapter and calibration included), the prompt template's file hash, the scoring
settings, and the fully rendered messages. Each answer is committed as soon as it arrives, so a
crash loses at most the call in flight. Only usable answers are stored: a timeout or malformed
text may be transient, and storing it would make the failure permanent.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

from distill.backends.base import LLMResult, Messages, ScoreParams
from fusionlog.embedding import cache_dir

SCHEMA_VERSION = 1


def default_cache_path() -> Path:
    return cache_dir() / "llm_verdicts.sqlite"


def cache_key(backend: str, model_id: str, template_sha: str, params: ScoreParams, messages: Messages) -> str:
    blob = json.dumps(
        {"v": SCHEMA_VERSION, "backend": backend, "model": model_id, "template": template_sha,
         "params": asdict(params), "messages": messages},
        sort_keys=True, ensure_ascii=False,
    ).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


class VerdictCache:
    """get/put by key; `hits`/`misses` count lookups for the run summary."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, backend TEXT, model TEXT, "
            "template TEXT, result TEXT NOT NULL, created REAL)"
        )
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> LLMResult | None:
        with self._lock:
            row = self._db.execute("SELECT result FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return LLMResult.from_dict(json.loads(row[0]))

    def put(self, key: str, result: LLMResult, backend: str, model: str, template: str) -> None:
        if not result.ok:
            return
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                (key, backend, model, template, json.dumps(result.to_dict(), ensure_ascii=False), time.time()),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> VerdictCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
