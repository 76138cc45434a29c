"""Streaming line readers that never crash on bad bytes and never load a whole file.

Why bytes first: real logs mix encodings and sometimes carry binary junk; decoding each line with
replacement keeps the line (and its neighbours) while counting the damage for the report.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

from fusionlog.constants import MAX_LINE_BYTES
from fusionlog.errors import DataError
from fusionlog.types import ReadStats


def open_binary(path: Path) -> io.BufferedIOBase:
    """Open a plain or gzip file for binary reading; a missing file is a DataError naming it."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a log file")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def iter_lines(
    path: Path | str, stats: ReadStats | None = None, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without newline).

    Undecodable bytes become U+FFFD and count in `stats.decode_errors`; lines longer than
    `max_line_bytes` are cut and counted in `stats.truncated`. An empty file raises DataError.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    seen_any = False
    with open_binary(path) as fh:
        line_no = 0
        while True:
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                break
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                # Oversized line: keep the head, drain the rest of it without holding it in memory.
                stats.truncated += 1
                raw = raw[:max_line_bytes]
                while True:
                    rest = fh.readline(max_line_bytes)
                    if not rest or rest.endswith(b"\n"):
                        break
            line_no += 1
            seen_any = True
            yield line_no, decode_line(raw, stats)
    stats.lines += line_no
    if not seen_any:
        raise DataError(f"{path}: file is empty, expected log lines")


def decode_line(raw: bytes, stats: ReadStats) -> str:
    """Decode one line as UTF-8, replacing bad bytes and counting the line once if any were bad."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.decode_errors += 1
        text = raw.decode("utf-8", errors="replace")
    text = text.rstrip("\r\n")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text
