"""The JSONL session format: data a user has already cut into sessions.

One JSON object per line:
    {"key": "vm-42", "label": 0, "templates": ["Claim successful", ...]}   # template texts, in order
    {"key": "vm-43", "lines": ["INFO nova ... Creating image", ...]}       # or raw lines, parsed by Drain3
`label` (0/1) is optional; `start`/`end` (epoch seconds) are optional and enable a time-ordered split.
Bad objects are counted and skipped; a file with none usable is an error naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from fusionlog.config import ParseConfig
from fusionlog.data.readers import iter_lines
from fusionlog.errors import DataError
from fusionlog.parsing import TemplateStore
from fusionlog.types import ReadStats, Session, SessionDataset


def is_jsonl_path(path: str) -> bool:
    return path.endswith((".jsonl", ".jsonl.gz", ".ndjson"))


def load_jsonl_sessions(path: Path, system: str | None = None, parse: ParseConfig | None = None) -> SessionDataset:
    system = system or path.name.split(".")[0]
    stats = ReadStats()
    rows: list[dict] = []
    for line_no, line in iter_lines(path, stats):
        row = _validate(line)
        if row is None:
            stats.unmatched_format += 1
            continue
        row["_line"] = line_no
        rows.append(row)
    if not rows:
        raise DataError(
            f"{path}: no usable session object; expected one JSON object per line with 'key' and "
            f"'templates' or 'lines'"
        )
    store: TemplateStore | None = None
    line_ids: dict[int, list[int]] = {}
    if any("lines" in r for r in rows):
        store = TemplateStore(system, parse)
        for r in rows:
            if "lines" in r:
                line_ids[r["_line"]] = [store.fit_line(str(x)) for x in r["lines"]]
    table: list[str] = list(store.templates) if store else []
    index = {t: i for i, t in enumerate(table)}
    sessions: list[Session] = []
    for r in rows:
        if "lines" in r:
            eids = line_ids[r["_line"]]
        else:
            eids = [index.setdefault(str(t), len(index)) for t in r["templates"]]
        sessions.append(Session(system, str(r["key"]), eids, r.get("label"), r.get("start"), r.get("end")))
    if len(index) > len(table):
        table = [t for t, _ in sorted(index.items(), key=lambda kv: kv[1])]
    return SessionDataset(
        name=str(path),
        system=system,
        templates=table,
        sessions=sessions,
        time_ordered=all(s.start is not None for s in sessions),
        stats=stats,
        description=f"JSONL sessions from {path}",
        store=store,
    )


def _validate(line: str) -> dict | None:
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "key" not in obj:
        return None
    seq = obj.get("templates", obj.get("lines"))
    if not isinstance(seq, list) or not seq:
        return None
    label = obj.get("label")
    if label is not None and label not in (0, 1):
        return None
    for tkey in ("start", "end"):
        if obj.get(tkey) is not None and not isinstance(obj[tkey], (int, float)):
            return None
    return obj


def write_jsonl_sessions(dataset: SessionDataset, path: Path) -> None:
    """Write sessions with template texts, the format `load_jsonl_sessions` reads back."""
    with open(path, "w", encoding="utf-8") as fh:
        for s in dataset.sessions:
            obj = {"key": s.key, "templates": [dataset.templates[e] for e in s.event_ids]}
            if s.label is not None:
                obj["label"] = s.label
            if s.start is not None:
                obj["start"], obj["end"] = s.start, s.end
            fh.write(json.dumps(obj) + "\n")
