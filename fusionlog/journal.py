"""A write-ahead journal of each ingest stream's lines (`serve --journal DIR`), so a crash loses no open session.

Why: an ingest stream's open sessions live in memory (`fusionlog.ingest`). A SIGTERM scores them, but a kill -9,
the OOM killer or a segfault would drop every session still collecting lines: an hour of an instance's lifecycle,
its verdict never written. With a journal each post's lines are appended to the stream's file (and flushed to
the operating system) before they are read, and the file says how far the verdicts were written. At the next
start `serve` replays each journal through a fresh sessionizer: sessions the journal's lines had already
finished, and whose verdicts were written, close silently; those finished after the last written mark are
scored and written now; the rest are open again, as they were. Delivery is at least once: a verdict written
just before a crash (after its mark was due) may be written again; none is lost.

The file stays small: it is emptied whenever its stream has no open session, and rewritten from the end of the last
post before the oldest open session's first line once it holds several times the lines from there. A wall-idle close
(the background poll) is journaled, so a replay closes the same sessions; a stream's flush (and a clean shutdown, and
a reload) removes its file.

Format: one entry per line. The first is a header `{"fusionlog_journal": 1, "stream": NAME, "base": N, "done": M}` (the
stream's lines before this file, and the last line whose finished sessions were written); then each line as a
space and the line itself (a JSON string if it holds a line break), `{"post": K}` after a post's K lines (in the
same write: lines without it were cut by a crash, their shipper had no answer and sends them again, so they are
not replayed), `{"done": M}` after a post's verdicts were written, `{"close": [KEY, ...]}` after a wall-idle
close, and `{"cut": [[LINE, KEY, PART], ...]}` after a post whose lines filled sessions up (`max_events_per_session`).
A replay closes those where they closed: one that begins after such a session's first line (a rewritten journal's)
holds fewer of its events. The header's `"parts"` (key -> next part) numbers the sessions of keys split before it;
its `"carry"` is what the sessionizer held before the first line (`fusionlog.stream.StreamCarry`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO
from urllib.parse import quote

from fusionlog.errors import ConfigError
from fusionlog.follow_state import replay_starts
from fusionlog.io import hold_lock
from fusionlog.stream import BLANK_CARRY, StreamCarry

logger = logging.getLogger(__name__)

JOURNAL_VERSION = 1
SUFFIX = ".journal"
#: A journal is rewritten from its oldest open session once it holds more lines than this ...
COMPACT_MIN_LINES = 10_000
#: ... and more than this many times the lines from the rewrite's start (the last post's end before that session).
COMPACT_FACTOR = 4
#: Post ends (with the sessionizer's carry there) a journal remembers at most as places a rewrite may start from.
MAX_PLACES = 256


@dataclass
class Replay:
    """What a journal holds, read back: the entries after its header, in order."""

    stream: str
    base: int  # lines of the stream before the journal's first line
    done: int  # the last line whose finished sessions were written (a stream line number)
    entries: list[str | list[str]] = field(default_factory=list)  # a line, or the keys of a wall-idle close
    cuts: dict[int, list[tuple[str, int]]] = field(default_factory=dict)  # line -> (key, part) closed there by size
    parts: dict[str, int] = field(default_factory=dict)  # key -> next part, of the keys split before the first line
    carry: StreamCarry = BLANK_CARRY  # the sessionizer's before the first line (`StreamSessionizer.start_at`)
    skipped: int = 0  # unreadable entries (a damaged file)
    uncommitted: int = 0  # lines of a post the crash cut short (its shipper had no answer: it sends them again)
    committed_bytes: int = 0  # where the last committed entry ends (a resumed journal is cut there)


class StreamJournal:
    """One stream's journal file. Writes are flushed to the operating system after each call (a process crash
    loses none); with `sync` a post's lines are also synced to disk before they are read (a power loss loses
    none), and a new or rewritten file's folder entry with them. A failed write (a full disk) warns once and
    journaling of this stream stops, while ingest goes on."""

    def __init__(self, folder: Path, stream: str, base: int = 0, done: int = 0, sync: bool = False) -> None:
        self.path = Path(folder) / f"{quote(stream, safe='')}{SUFFIX}"
        self.stream = stream
        self.sync = sync
        self.lines = 0  # lines in the file
        self._places: list[tuple[int, StreamCarry]] = []  # (stream line, carry there) where a rewrite may start
        self._failed = False
        self._fh = None
        self._start(base, done)

    @classmethod
    def resume(cls, path: Path, replay: Replay, sync: bool = False) -> StreamJournal:
        """Go on appending to a journal a previous serve left (its lines are the replayed sessions' lines)."""
        journal = cls.__new__(cls)
        journal.path, journal.stream, journal._failed, journal._fh = Path(path), replay.stream, False, None
        journal.sync = sync
        journal.lines = sum(1 for e in replay.entries if isinstance(e, str))
        journal._places = [(replay.base, replay.carry)]
        journal._guarded(lambda: os.truncate(journal.path, replay.committed_bytes))  # a cut post's lines go
        journal._open_append()
        return journal

    def _start(self, base: int, done: int, parts: dict[str, int] | None = None,
               carry: StreamCarry = BLANK_CARRY) -> None:
        """A new file holding only the header (the stream's numbering so far)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._guarded(lambda: _write_new(tmp, self.path, [self._header(base, done, parts, carry)], self.sync))
        self._open_append()
        self.lines = 0
        self._places = [(base, carry)]

    def _header(self, base: int, done: int, parts: dict[str, int] | None = None,
                carry: StreamCarry = BLANK_CARRY) -> str:
        head = {"fusionlog_journal": JOURNAL_VERSION, "stream": self.stream, "base": base, "done": done}
        if parts:
            head["parts"] = parts
        if carry != BLANK_CARRY:
            head["carry"] = carry.to_json()
        return json.dumps(head, ensure_ascii=False)

    def _open_append(self) -> None:
        if not self._failed:
            self._fh = self._guarded(lambda: open(self.path, "a", **TEXT))  # noqa: SIM115

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

    def _write(self, text: str, sync: bool = False) -> None:
        fh = self._fh
        if fh is not None:
            def write() -> None:
                fh.write(text)
                fh.flush()
                if sync:
                    os.fsync(fh.fileno())
            self._guarded(write)

    def lines_added(self, lines: list[str]) -> None:
        """Before the lines are read: after a crash they are in the file. The post's end mark comes in the same
        write, after them: lines without it were cut by a crash and are not replayed."""
        self._write("".join(map(_line_entry, lines)) + json.dumps({"post": len(lines)}) + "\n", self.sync)
        self.lines += len(lines)

    def written_through(self, line_no: int) -> None:
        """The sessions the stream's lines up to `line_no` finished are scored and written."""
        self._write(json.dumps({"done": line_no}) + "\n")

    def closed(self, keys: list[str]) -> None:
        """A wall-idle close of these sessions (scored and written)."""
        self._write(json.dumps({"close": keys}, ensure_ascii=False) + "\n")

    def cut(self, cuts: list[tuple[int, list[tuple[str, int]]]]) -> None:
        """Sessions (key, part) the size limit closed, by stream line; before their verdicts are written."""
        if cuts:
            self._write(_cut_entry(cuts))

    def settle(self, line_no: int, oldest_open: int | None, parts: dict[str, int] | None = None,
               carry: StreamCarry = BLANK_CARRY) -> None:
        """After a post or a close: empty the file when nothing is open; when it has grown well past what the open
        sessions need, rewrite it from the last post's end before the oldest open session's first line. `parts`:
        the stream's split keys' next part numbers (`StreamSessionizer.split_parts`), for the new header; `carry`:
        what the sessionizer holds now (`StreamSessionizer.carry`), kept for a rewrite that starts here.

        Why from a post's end, not from the session's first line: a replay must begin where the sessionizer's
        carry is known (the window in progress and its count, the newest log time). Before stop 29 the rewrite began
        at the session's first line with a blank carry, and a line window cut by size was counted and named anew."""
        if self._failed:
            return
        if oldest_open is None:
            if self.lines:
                self._start(line_no, line_no, parts, carry)
            else:
                self._places = [(line_no, carry)]
            return
        self._places = replay_starts([*self._places, (line_no, carry)], itemgetter(0), oldest_open, MAX_PLACES)
        base, base_carry = self._places[0]
        if self.lines > COMPACT_MIN_LINES and self.lines > COMPACT_FACTOR * (line_no - base):
            self._compact(base + 1, line_no, parts, base_carry)

    def _compact(self, first_line: int, line_no: int, parts: dict[str, int] | None = None,
                 carry: StreamCarry = BLANK_CARRY) -> None:
        """Keep the entries from stream line `first_line` on (the closes and size closes among them too); the
        header's mark is `line_no`, as every verdict up to now was written, and its carry the sessionizer's before
        `first_line`."""
        self.close()
        replay = self._guarded(lambda: read_journal(self.path))
        if replay is None:
            return
        kept: list[str] = [self._header(first_line - 1, line_no, parts, carry)]
        cuts = sorted((at, sessions) for at, sessions in replay.cuts.items() if at >= first_line)
        if cuts:
            kept.append(_cut_entry(cuts)[:-1])
        run: list[str] = []  # kept lines since the last mark: committed as one post

        def commit() -> None:
            if run:
                kept.extend([*run, json.dumps({"post": len(run)})])
                run.clear()

        n = replay.base
        for entry in replay.entries:
            if isinstance(entry, str):
                n += 1
                if n >= first_line:
                    run.append(_line_entry(entry)[:-1])
            elif n >= first_line:
                commit()
                kept.append(json.dumps({"close": entry}, ensure_ascii=False))
        commit()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._guarded(lambda: _write_new(tmp, self.path, kept, self.sync))
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


#: How journal files are opened: exact round trips of any str a post can hold (no newline translation; a lone
#: surrogate from a JSON escape is kept as it came, where strict UTF-8 would fail the write).
TEXT = {"encoding": "utf-8", "errors": "surrogatepass", "newline": ""}
TEXT_CODEC = ("utf-8", "surrogatepass")


def _cut_entry(cuts: list[tuple[int, list[tuple[str, int]]]]) -> str:
    return json.dumps({"cut": [[at, key, part] for at, sessions in cuts for key, part in sessions]},
                      ensure_ascii=False) + "\n"


def _line_entry(line: str) -> str:
    """A line's entry: the line itself after a space (no encoding work on the hot path), or as a JSON string
    when it holds a line break of its own."""
    if "\n" in line or "\r" in line:
        return json.dumps(line, ensure_ascii=False) + "\n"
    return " " + line + "\n"


def _write_new(tmp: Path, path: Path, rows: list[str], sync_folder: bool = False) -> None:
    """Write `rows` to a temp file beside `path` and rename it there (a crash leaves the old file or the new);
    `sync_folder`: the rename itself reaches the disk too."""
    with open(tmp, "w", **TEXT) as fh:
        fh.write("".join(r + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    if sync_folder:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_journal(path: Path) -> Replay:
    """A journal file's header and committed entries; `ConfigError` for a file that is not one (its header
    unreadable). A post's lines count only once the post's end mark follows them: a crash while a post was being
    written left lines its shipper never had an answer for (it sends them again)."""
    data = Path(path).read_bytes()
    rows = data.split(b"\n")
    try:
        head = json.loads(rows[0].decode("utf-8"))
        if head.get("fusionlog_journal") != JOURNAL_VERSION:
            raise ValueError(f"version {head.get('fusionlog_journal')!r}")
        replay = Replay(str(head["stream"]), int(head["base"]), int(head["done"]),
                        parts={str(k): int(v) for k, v in head.get("parts", {}).items()},
                        carry=StreamCarry.from_json(head.get("carry", {})))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not an ingest journal ({exc})") from None
    pending: list[str] = []
    offset = replay.committed_bytes = len(rows[0]) + 1
    for raw in rows[1:]:
        offset += len(raw) + 1
        if not raw:
            continue
        try:
            row = raw.decode(*TEXT_CODEC)
        except UnicodeDecodeError:  # a character the crash cut in two, or a damaged file
            replay.skipped += 1
            continue
        if row[0] == " ":
            pending.append(row[1:])
            continue
        try:
            entry = json.loads(row)
        except ValueError:
            replay.skipped += 1
            continue
        if isinstance(entry, str):
            pending.append(entry)
            continue
        if isinstance(entry, dict) and isinstance(entry.get("post"), int):
            if entry["post"] != len(pending):  # lines lost in the middle: never the case but for a damaged file
                replay.skipped += len(pending)
            else:
                replay.entries += pending
            pending = []
        elif isinstance(entry, dict) and isinstance(entry.get("done"), int):
            replay.done = max(replay.done, entry["done"])  # the marks grow: the furthest is all a replay needs
        elif isinstance(entry, dict) and isinstance(entry.get("close"), list):
            replay.entries.append([str(k) for k in entry["close"]])
        elif isinstance(entry, dict) and isinstance(entry.get("cut"), list):
            try:
                cuts = [(int(at), str(key), int(part)) for at, key, part in entry["cut"]]
            except (TypeError, ValueError):
                replay.skipped += 1
                continue
            for at, key, part in cuts:
                replay.cuts.setdefault(at, []).append((key, part))
        else:
            replay.skipped += 1
            continue
        replay.committed_bytes = min(offset, len(data))
    replay.uncommitted = len(pending)
    return replay


def journals(folder: Path) -> Iterator[Path]:
    """The journal files a previous serve left in `folder` (oldest name first); a rewrite's temp file a crash
    left behind is removed (the journal it was to replace is still whole)."""
    for tmp in Path(folder).glob(f".*{SUFFIX}.tmp"):
        tmp.unlink(missing_ok=True)
    yield from sorted(Path(folder).glob(f"*{SUFFIX}"))


LOCK_NAME = ".lock"


def lock_folder(folder: Path) -> IO[str]:
    """Hold `folder` for this serve; `ConfigError` when another serve holds it. Why: two replicas pointed at one
    volume would append to, replay and remove each other's journals."""
    return hold_lock(Path(folder) / LOCK_NAME, lambda pid: (
        f"--journal {folder}: another serve uses it{f' (pid {pid})' if pid else ''}; give each serve a journal "
        f"folder of its own"))
