"""Streaming line readers that never crash on bad bytes and never load a whole file.

Why bytes first: real logs mix encodings and sometimes carry binary junk; decoding each line with
replacement keeps the line (and its neighbours) while counting the damage for the report.
"""

from __future__ import annotations

import codecs
import gzip
import io
import logging
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from fusionlog.constants import MAX_LINE_BYTES
from fusionlog.errors import DataError
from fusionlog.types import ReadStats

logger = logging.getLogger(__name__)


#: the first two bytes of every gzip stream
GZIP_MAGIC = b"\x1f\x8b"


def open_binary(path: Path, stats: ReadStats | None = None) -> io.BufferedIOBase:
    """Open a plain or gzip log file for binary reading; a missing file is a DataError naming it.

    Gzip is told by the file's first bytes, not its name: rotation leaves compressed files without `.gz`
    (`app.log.2`) and people gunzip files without renaming them. A gzip stream that ends early (a file cut
    while it was copied or compressed) is read up to the cut and counted in `stats.truncated_files`.
    """
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a log file")
    fh = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    # how far into the file on disk (a gzip file's compressed bytes), for progress bars; a pipe (`<(zcat ...)`,
    # /dev/stdin) has no position, and asking raised "Illegal seek" before a line was read
    disk_tell = fh.tell if fh.seekable() else _no_position
    out = unpacked(fh, path, stats)
    out.disk_tell = disk_tell  # type: ignore[attr-defined]
    return out


def unpacked(fh: io.BufferedReader, name: Path, stats: ReadStats | None = None) -> io.BufferedIOBase:
    """`fh` read as UTF-8 lines: gunzipped when it starts as gzip does, recoded when it starts with a byte-order
    mark. Files and stdin alike: `zcat`-less `cat app.log.gz | fusionlog detect` and PowerShell's UTF-16 pipes
    read as the file would (stdin once read them as bytes: garbage lines, every one a new template)."""
    out: io.BufferedIOBase = fh
    if fh.peek(2)[:2] == GZIP_MAGIC:  # peek, not read: a pipe (`<(zcat ...)`) can be opened only once
        # 256 KiB reads: with 64 KiB the wrapper's copy cost 17% of gzip reading speed; with 256 KiB, none
        out = io.BufferedReader(_CutTolerantGzip(fh, name, stats if stats is not None else ReadStats()), 1 << 18)
    encoding = _bom_encoding(out.peek(4)[:4])
    if encoding is not None:
        out = io.BufferedReader(_Recoded(out, encoding), 1 << 16)
    return out


def _no_position() -> int:
    return 0


#: byte-order marks: a log that starts with one is read in its encoding (PowerShell 5's `>` writes UTF-16)
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _bom_encoding(head: bytes) -> str | None:
    return next((enc for bom, enc in _BOMS if head.startswith(bom)), None)


class _Recoded(io.RawIOBase):
    """A file in another encoding read as UTF-8 bytes (its byte-order mark dropped), so line splitting and
    decoding stay one code path. Why: UTF-16's newline is two bytes with a zero, and read as UTF-8 every
    line was garbage that no format matched."""

    def __init__(self, fh: io.BufferedIOBase, encoding: str) -> None:
        self._fh, self._decode = fh, codecs.getincrementaldecoder(encoding)(errors="replace")
        self._pending, self._done = b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending and not self._done:
            raw = self._fh.read(1 << 16)
            self._done = not raw
            self._pending = self._decode.decode(raw, final=self._done).encode("utf-8")
        n = min(len(buffer), len(self._pending))
        buffer[:n], self._pending = self._pending[:n], self._pending[n:]
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


class _CutTolerantGzip(io.RawIOBase):
    """A gzip file whose damaged tail reads as end of file (counted and logged once), not an exception."""

    def __init__(self, fh: io.BufferedReader, path: Path, stats: ReadStats) -> None:
        self._fh, self._gz = fh, gzip.GzipFile(fileobj=fh, mode="rb")
        self._path, self._stats, self._cut = path, stats, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._cut:
            return 0
        try:
            data = self._gz.read1(len(buffer))  # one raw read: a failing read loses nothing read before it
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            self._cut = True
            self._stats.truncated_files += 1
            logger.warning("%s: the compressed data ends early or is damaged (%s); read up to that point",
                           self._path, exc)
            return 0
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._gz.close()  # a GzipFile given a fileobj leaves it open
        self._fh.close()
        super().close()


def iter_lines(
    path: Path | str, stats: ReadStats | None = None, max_line_bytes: int = MAX_LINE_BYTES,
    allow_empty: bool = False,
) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without newline).

    Undecodable bytes become U+FFFD and count in `stats.decode_errors`; lines longer than
    `max_line_bytes` are cut and counted in `stats.truncated`. An empty file raises DataError, unless
    `allow_empty` (one file of several: a log just rotated is empty), when it counts in `stats.empty_files`.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    seen_any = False
    with open_binary(path, stats) as fh:
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
        if not allow_empty:
            raise DataError(f"{path}: file is empty, expected log lines")
        stats.empty_files += 1
        logger.warning("%s: empty file, skipped", path)


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
    if "\x1b" in text:
        text = strip_ansi(text)
    return text


#: a terminal escape sequence: colours and styles (`ESC[1;32m`), cursor moves, OSC titles and links
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    """The line without terminal escapes. Why: a service that colours its console output (`kubectl logs`,
    a dev server) writes `ESC[32mINFO ESC[0m`; left in, the format string misses every line and Drain makes
    a template per colour."""
    return _ANSI.sub("", text)
