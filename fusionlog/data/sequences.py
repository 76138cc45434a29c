"""Session datasets that arrive as template sequences (no raw lines).

Two layouts are read: the ait-aecid files (`key,<space-separated 1-based event ids>` plus a template file
whose line k is event k) and JSONL with template texts per session (HDFS_100k).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from fusionlog.data.readers import iter_lines
from fusionlog.errors import DataError
from fusionlog.types import ReadStats, Session

#: Template text given to event ids that the template file does not define.
UNKNOWN_TEMPLATE = "unknown event"


def read_template_lines(path: Path) -> list[str]:
    """ait-aecid template file: one template per line, no header; line k (1-based) is event k."""
    stats = ReadStats()
    return [line for _, line in iter_lines(path, stats)]


def read_id_sequences(path: Path, system: str, label: int | None, table: list[str], stats: ReadStats) -> list[Session]:
    """`key,<ids>` lines → sessions with 0-based event ids. Bad lines are counted and skipped.

    An id beyond the template file (ait-aecid's Thunderbird file is one short) maps to one shared
    placeholder template appended to `table`, counted in `stats.unknown_events`, so the session survives.
    """
    n_known = len(table)
    placeholder: int | None = None
    sessions: list[Session] = []
    for _line_no, line in iter_lines(path, stats):
        key, sep, ids = line.partition(",")
        if not sep or not key:
            stats.unmatched_format += 1
            continue
        try:
            eids = [int(tok) - 1 for tok in ids.split()]
        except ValueError:
            stats.unmatched_format += 1
            continue
        if any(e < 0 for e in eids):
            stats.unmatched_format += 1
            continue
        if any(e >= n_known for e in eids):
            if placeholder is None:
                placeholder = table.index(UNKNOWN_TEMPLATE) if UNKNOWN_TEMPLATE in table else len(table)
                if placeholder == len(table):
                    table.append(UNKNOWN_TEMPLATE)
            stats.unknown_events += sum(1 for e in eids if e >= n_known)
            eids = [e if e < n_known else placeholder for e in eids]
        sessions.append(Session(system, key, eids, label))
    return sessions


def read_text_sequences(
    path: Path, system: str, key_field: str, stats: ReadStats
) -> tuple[list[str], list[Session]]:
    """JSONL with `templates` (texts) per session → (template table, sessions)."""
    table: dict[str, int] = {}
    sessions: list[Session] = []
    opener = gzip.open if path.suffix == ".gz" else open
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            stats.lines += 1
            try:
                obj = json.loads(line)
                texts = obj["templates"]
                key = str(obj[key_field])
            except (json.JSONDecodeError, KeyError, TypeError):
                stats.unmatched_format += 1
                continue
            eids = [table.setdefault(t, len(table)) for t in texts]
            label = obj.get("label")
            sessions.append(Session(system, key, eids, None if label is None else int(label)))
    return list(table), sessions
