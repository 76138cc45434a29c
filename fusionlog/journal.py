"""A write-ahead journal of each ingest stream's lines (`serve --journal DIR`), so a crash loses no open session.

Why: an ingest stream's open sessions live in memory (`fusionlog.ingest`). A SIGTERM scores them, but a kill -9,
the OOM killer or a segfault would drop every session still collecting lines: an hour of an instance's lifecycle,
its verdict never written. With a journal each post's lines are appended to the stream's file (and flushed to
the operating system) before they are read, and the file says how far the verdicts were written. At the next
start `serve` replays each journal through a fresh sessionizer: sessions the journal's lines had already
finished, and whose verdicts were written, close silently; those finished after the last written mark are
scored and written now; the rest are open again, as they were. Delivery is at least once: a verdict written
just before a crash (after its mark was due) may be written again; none is lost.

The file stays small: it is emptied whenever its stream has no open session, and rewritten from the oldest open
session's first line once it holds several times the lines that session spans. A wall-idle close (the
background poll) is journaled, so a replay closes the same sessions; a stream's flush (and a clean shutdown,
and a reload) removes its file.

Format: JSON lines. The first is a header `{"fusionlog_journal": 1, "stream": NAME, "base": N, "done": M}` (the
stream's lines before this file, and the last line whose finished sessions were written); then each line as a
JSON string, `{"done": M}` after a post's verdicts were written, and `{"close": [KEY, ...]}` after a wall-idle
close. A last line cut by the crash is skipped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from fusionlog.errors import ConfigError

logger = logging.getLogger(__name__)

JOURNAL_VERSION = 1
SUFFIX = ".journal"
#: A journal is rewritten from its oldest open session once it holds more lines than this ...
COMPACT_MIN_LINES = 10_000
#: ... and more than this many times the lines that session spans.
COMPACT_FACTOR = 4


@dataclass
class Replay:
    """What a journal holds, read back: the entries after its header, in order."""

    stream: str
    base: int  # lines of the stream before the journal's first line
    done: int  # the last line whose finished sessions were written (a stream line number)
    entries: list[str | list[str]] = field(default_factory=list)  # a line, or the keys of a wall-idle close
    skipped: int = 0  # unreadable entries (a last line cut by the crash)


class StreamJournal:
    """One stream's journal file. Writes are flushed to the operating system after each call; a failed write (a
    full disk) warns once and journaling of this stream stops, while ingest goes on."""

    def __init__(self, folder: Path, stream: str, base: int = 0, done: int = 0) -> None:
        self.path = Path(folder) / f"{quote(stream, safe='')}{SUFFIX}"
        self.stream = stream
        self.lines = 0  # lines in the file
        self._failed = False
        self._fh = None
        self._start(base, done)

    @classmethod
    def resume(cls, path: Path, replay: Replay) -> StreamJournal:
        """Go on appending to a journal a previous serve left (its lines are the replayed sessions' lines)."""
        journal = cls.__new__(cls)
        journal.path, journal.stream, journal._failed, journal._fh = Path(path), replay.stream, False, None
        journal.lines = sum(1 for e in replay.entries if isinstance(e, str))
        journal._guarded(lambda: _drop_cut_tail(journal.path))  # so the next entry starts a line of its own
        journal._open_append()
        return journal

    def _start(self, base: int, done: int) -> None:
        """A new file holding only the header (the stream's numbering so far)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._guarded(lambda: _write_new(tmp, self.path, [self._header(base, done)]))
        self._open_append()
        self.lines = 0

    def _header(self, base: int, done: int) -> str:
        return json.dumps({"fusionlog_journal": JOURNAL_VERSION, "stream": self.stream, "base": base, "done": done})

    def _open_append(self) -> None:
        if not self._failed:
            self._fh = self._guarded(lambda: open(self.path, "a", encoding="utf-8"))  # noqa: SIM115

    def _guarded(self, write):
        if self._failed:
            return None
        try:
            return write()
        except OSError as exc:
            logger.warning("ingest journal %s: cannot write (%s); stream %r goes on without one (a crash now "
                           "loses its open sessions)", self.path, exc, self.stream)
            self._failed = True
            return None

    def _write(self, text: str) -> None:
        fh = self._fh
        if fh is not None:
            def write() -> None:
                fh.write(text)
                fh.flush()
            self._guarded(write)

    def lines_added(self, lines: list[str]) -> None:
        """Before the lines are read: after a crash they are in the file."""
        self._write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        self.lines += len(lines)

    def written_through(self, line_no: int) -> None:
        """The sessions the stream's lines up to `line_no` finished are scored and written."""
        self._write(json.dumps({"done": line_no}) + "\n")

    def closed(self, keys: list[str]) -> None:
        """A wall-idle close of these sessions (scored and written)."""
        self._write(json.dumps({"close": keys}, ensure_ascii=False) + "\n")

    def settle(self, line_no: int, oldest_open: int | None) -> None:
        """After a post or a close: empty the file when nothing is open, rewrite it from the oldest open session's
        first line when it has grown well past what that session spans."""
        if self._failed:
            return
        if oldest_open is None:
            if self.lines:
                self._start(line_no, line_no)
            return
        span = line_no - oldest_open + 1
        if self.lines > COMPACT_MIN_LINES and self.lines > COMPACT_FACTOR * span:
            self._compact(oldest_open, line_no)

    def _compact(self, first_line: int, line_no: int) -> None:
        """Keep the entries from stream line `first_line` on (the closes among them too); the header's mark is
        `line_no`, as every verdict up to now was written."""
        self._fh.close()
        self._fh = None
        replay = read_journal(self.path)
        kept: list[str] = [self._header(first_line - 1, line_no)]
        n = replay.base
        for entry in replay.entries:
            if isinstance(entry, str):
                n += 1
                if n >= first_line:
                    kept.append(json.dumps(entry, ensure_ascii=False))
            elif n >= first_line:
                kept.append(json.dumps({"close": entry}, ensure_ascii=False))
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._guarded(lambda: _write_new(tmp, self.path, kept))
        self.lines = line_no - first_line + 1
        self._open_append()

    def remove(self) -> None:
        """The stream was flushed: every session scored and written, nothing to replay."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _drop_cut_tail(path: Path) -> None:
    """Truncate a last line the crash cut (no newline after it): it was skipped at reading."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        back = min(size, 1 << 20)
        fh.seek(size - back)
        tail = fh.read(back)
        if tail.endswith(b"\n") or not tail:
            return
        cut = tail.rfind(b"\n")
        fh.truncate(size - back + cut + 1 if cut >= 0 else size - back)


def _write_new(tmp: Path, path: Path, rows: list[str]) -> None:
    """Write `rows` to a temp file beside `path` and rename it there (a crash leaves the old file or the new)."""
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("".join(r + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_journal(path: Path) -> Replay:
    """A journal file's header and entries; `ConfigError` for a file that is not one (its header unreadable)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        rows = fh.read().split("\n")
    try:
        head = json.loads(rows[0])
        if head.get("fusionlog_journal") != JOURNAL_VERSION:
            raise ValueError(f"version {head.get('fusionlog_journal')!r}")
        replay = Replay(str(head["stream"]), int(head["base"]), int(head["done"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not an ingest journal ({exc})") from None
    for row in rows[1:]:
        if not row:
            continue
        try:
            entry = json.loads(row)
        except ValueError:
            replay.skipped += 1
            continue
        if isinstance(entry, str):
            replay.entries.append(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("done"), int):
            replay.done = max(replay.done, entry["done"])
            # a mark ends a post: entries before it are done; the replay needs only the furthest one
        elif isinstance(entry, dict) and isinstance(entry.get("close"), list):
            replay.entries.append([str(k) for k in entry["close"]])
        else:
            replay.skipped += 1
    return replay


def journals(folder: Path) -> Iterator[Path]:
    """The journal files a previous serve left in `folder` (oldest name first)."""
    yield from sorted(Path(folder).glob(f"*{SUFFIX}"))
