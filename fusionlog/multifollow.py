"""Follow every live log file of a directory or glob as one stream (`detect --follow DIR|'GLOB'`), like `tail -F`
over a folder.

Why: a service rarely logs to one file: a node keeps one per container, a fleet one per host, and new ones appear
(a pod starts). A detector beside them should read what each file adds, as it arrives, and pick up files that
appear later, as a log shipper does, without a restart.

What is followed: the *live* files the sources name: not a rotation's older copies (`app.log.1`: the live
file's follower reads an old copy to its end when the rotation happens), not compressed ones (`.gz`, `.xz`, ...:
finished, and compressed files do not grow line by line), not hidden ones. The sources are looked at again every
`rescan` seconds: a new file is read from its top; a name that shows a file some follower has already read
(a date-stamped rotation, `app.log-20261128`) is not read again; a file gone from its name (deleted, not
rotated) is dropped once its follower has read it to the end.

The lines of all files form one stream, in the order they are read, as a shipper's posts to one ingest stream:
sessions keyed by an id gather lines from every file; a line or time window takes lines as they arrive. A busy
file yields the turn after `TURN_LINES` lines, so a flood in one file does not starve the others.

With `keep_position` (`detect --follow DIR --state`) the order of the turns is kept, so a restart can read the
files again in the same order and rebuild the same sessions (`fusionlog.folder_state`).
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fusionlog.data.logfiles import expand_log_source, is_multi_source
from fusionlog.errors import ConfigError
from fusionlog.follow_state import FilePosition, Mark, ResumeAt, same_file
from fusionlog.stream import follow
from fusionlog.types import ReadStats

logger = logging.getLogger(__name__)

#: Name endings of files that do not grow line by line (a rotation's compressed copies).
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
#: Lines one file may yield before the next file gets its turn.
TURN_LINES = 4096
#: File descriptors kept free for what else a detect opens (the model's files, its output, the state, threads).
FD_RESERVE = 64


def open_file_budget() -> int:
    """How many files a folder follow may hold open at once: the process's soft limit on open files, first raised
    to its hard limit where the system allows (as `ulimit -n` would), less FD_RESERVE.

    Why: a follower keeps its file open (`tail -F` does too), and a folder of a big node's container logs or a
    log server's hosts can hold more files than the usual soft limit of 1,024; past it every open failed and the
    detect stopped with "Too many open files"."""
    try:
        import resource
    except ImportError:  # not a Unix: no such limit to read
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft != unlimited and (hard == unlimited or hard > soft):
        target = hard if hard != unlimited else max(soft, 1 << 16)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(1, (soft if soft != unlimited else 1 << 20) - FD_RESERVE)


def _rotated_copy(path: Path) -> bool:
    """`app.log.1`: a rotation's numbered copy (its live file is followed instead)."""
    stem, dot, n = path.name.rpartition(".")
    return bool(dot and stem and n.isdigit())


def live_files(sources: Sequence[str]) -> list[Path]:
    """The files of `sources` a follow reads: existing, not hidden, not compressed, not a numbered rotation's copy.
    A source that names no file (yet) gives none: a follow waits for it."""
    out: list[Path] = []
    for source in sources:
        try:
            files = expand_log_source(source)
        except ConfigError:
            continue  # nothing there yet: looked at again at the next rescan
        multi = is_multi_source(source)
        for path in files:
            if multi and (path.name.endswith(COMPRESSED) or _rotated_copy(path)):
                continue
            if path.is_file() or not multi:
                out.append(path)
    return list(dict.fromkeys(out))


@dataclass
class _Follower:
    path: Path
    lines: Iterator[str | None]
    position: FilePosition = field(default_factory=lambda: FilePosition(resumable=False))  # the files it read
    at_end: bool = False  # its last turn ended at the end of its file
    start: Mark | None = None  # where an earlier run left it (a resumed follow), until it opens its file


class Turns:
    """The order the files' lines were read in: per turn, the file and the stream line the turn ended at. A
    restart reads the files again in this order, so the interleaved stream (and every session in it) is the same.
    Kept compact (two arrays and a table of names): a session open for long keeps many turns."""

    def __init__(self) -> None:
        self.ends = array("q")
        self.files = array("i")
        self.names: list[str] = []
        self._no: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ends)

    def append(self, name: str, end: int) -> None:
        no = self._no.get(name)
        if no is None:
            no = self._no[name] = len(self.names)
            self.names.append(name)
        self.ends.append(end)
        self.files.append(no)

    def after(self, line: int) -> list[tuple[str, int]]:
        """(file, end) of the turns that end after stream line `line`."""
        i = bisect.bisect_right(self.ends, line)
        return [(self.names[f], e) for f, e in zip(self.files[i:], self.ends[i:], strict=True)]

    def prune(self, line: int) -> None:
        """Forget the turns that end at or before `line` (a restart reads again only from there)."""
        i = bisect.bisect_right(self.ends, line)
        if i:
            del self.ends[:i]
            del self.files[:i]


@dataclass(frozen=True)
class FolderResume:
    """Where a folder follow begins after a restart (`fusionlog.folder_state`)."""

    base: int  # stream lines before the first one read
    starts: dict[str, tuple[ResumeAt, Mark]]  # followed path -> where its follower begins, and its saved mark
    turns: list[tuple[str, int]]  # (followed path, stream line the turn ended at): read again in this order
    known: list[Mark]  # files an earlier run read: not new, whatever name they have now


class MultiFollow:
    """The stream of lines of every live file of `sources`; iterate it for lines and `None` heartbeats (all files
    quiet for a poll). Runs until `stop`."""

    def __init__(self, sources: Sequence[str], stats: ReadStats | None = None, *,
                 stop: threading.Event | None = None, poll_interval: float = 0.25, from_end: bool = False,
                 rescan: float = 5.0, clock=time.monotonic, resume: FolderResume | None = None,
                 keep_position: bool = False, max_files: int | None = None) -> None:
        """`keep_position` (`--state`): keep the order of turns and each file's place, and leave an unterminated
        last line for the next run at a stop; `resume`: begin where an earlier run left each file, reading its
        turns again first; `max_files`: files followed at once at most (default: `open_file_budget()`); the
        others wait, with a warning, until a followed file goes away."""
        self.sources = list(sources)
        self.stats = stats if stats is not None else ReadStats()
        self.stop = stop or threading.Event()
        self.poll_interval = poll_interval
        self.rescan = rescan
        self.clock = clock
        self.followers: dict[Path, _Follower] = {}
        self._read: set[tuple[int, int]] = set()  # (device, inode) of every file a follower has opened
        self._from_end = from_end and resume is None  # files that appeared while it was down are read whole
        self._scanned = float("-inf")
        self.max_files = max_files if max_files is not None else open_file_budget()
        self.waiting: set[Path] = set()  # live files not followed for want of room (max_files)
        self.keep_position = keep_position or resume is not None
        self.line = resume.base if resume is not None else 0  # stream lines at the end of the last turn
        self.turns = Turns()
        self._turn: tuple[_Follower, int] | None = None  # the follower whose turn it is, and its lines before it
        self._resume = resume
        self.replay_broken = False  # a file ended before the earlier run's turns did
        self._known = {(m.dev, m.ino): m for m in resume.known} if resume is not None else {}
        #: called with a file's path before its turn's lines (`StreamSessionizer.from_file`: a trace's exception
        #: line goes with its own file's last record)
        self.on_turn: Callable[[str], None] | None = None

    # -- where it is (`fusionlog.folder_state`) -------------------------------------------------------------------
    def line_now(self) -> int:
        """Stream lines yielded so far (counted from the resumed run's first)."""
        if self._turn is None:
            return self.line
        f, before = self._turn
        return self.line + f.position.now()[2] - before

    def current_turn(self) -> list[tuple[str, int]]:
        """[(file, stream line)] of the turn going on, if it has yielded a line; else []."""
        if self._turn is None or self.line_now() <= self.line:
            return []
        return [(str(self._turn[0].path), self.line_now())]

    def positions(self) -> dict[str, Mark]:
        """Each followed file's place now (one not opened yet: where it will begin)."""
        out = {}
        for path, f in self.followers.items():
            if f.position.ready:
                out[str(path)] = f.position.mark()
            elif f.start is not None:
                out[str(path)] = f.start
        return out

    def origins(self) -> dict[str, Mark]:
        """Where each follower began reading in this run."""
        out = {str(p): f.position.origin or f.start for p, f in self.followers.items()}
        return {p: m for p, m in out.items() if m is not None}

    def left(self) -> list[Mark]:
        """The files the followers left (rotated away), each read to its end."""
        return [m for f in self.followers.values() for m in f.position.left]

    @property
    def ready(self) -> bool:
        return any(f.position.ready for f in self.followers.values())

    def _begin_turn(self, f: _Follower) -> None:
        if self.on_turn is not None:
            self.on_turn(str(f.path))
        if self.keep_position:
            self._turn = (f, f.position.now()[2])

    def _end_turn(self, f: _Follower, n: int) -> None:
        if self.keep_position:
            self._turn = None
            if n:
                self.line += n
                self.turns.append(str(f.path), self.line)

    @property
    def files_read(self) -> int:
        """Files opened so far (a rotation's new file counts)."""
        self._note_read()
        return len(self._read)

    def _scan(self) -> None:
        """Start a follower for each live file not followed yet (the first scan honours `from_end`)."""
        first = self._scanned == float("-inf")
        self._scanned = self.clock()
        self._note_read()
        waiting: set[Path] = set()
        for path in live_files(self.sources):
            path = path.absolute()
            if path in self.followers:
                continue
            if len(self.followers) >= self.max_files:
                waiting.add(path)
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in self._read:  # a renamed file some follower read (a dated rotation)
                continue
            resume = None
            if ident in self._known and same_file(known := self._known[ident], path):  # read by an earlier run
                if st.st_size == known.offset:  # to its end (a rotated copy under a new name): not again
                    self._read.add(ident)
                    continue
                resume = ResumeAt(str(path), known.offset, known.file_line)  # renamed: its rest only
                logger.info("follow: %s was read by an earlier run up to line %d; reading its rest", path,
                            known.file_line)
            f = _Follower(path, iter(()), FilePosition(resumable=self.keep_position))
            f.lines = follow(path, self.stats, stop=self.stop, poll_interval=0.0,
                             from_end=self._from_end and first, position=f.position, resume=resume)
            self.followers[path] = f
            if path in self.waiting:
                logger.info("follow: %s is followed now (from its top)", path)
            elif not first:
                logger.info("follow: %s appeared; reading it from the top", path)
        if waiting - self.waiting:
            logger.warning("follow: %d live file(s) wait (%s%s): %d are followed, as many as this process may hold "
                           "open; raise the limit on open files (`ulimit -n`) to follow them all. They are followed "
                           "as followed files go away", len(waiting), ", ".join(str(p) for p in sorted(waiting)[:3]),
                           ", ..." if len(waiting) > 3 else "", len(self.followers))
        self.waiting = waiting
        if not self.followers and first:
            logger.info("follow: no file matches %s yet; waiting", ", ".join(self.sources))

    def _note_read(self) -> None:
        for f in self.followers.values():
            self._read |= f.position.idents

    def _drop_gone(self) -> None:
        """A follower whose name no longer shows any file (deleted, not rotated) ends once it read to the end."""
        for path in [p for p, f in self.followers.items() if f.at_end and not p.exists()]:
            f = self.followers.pop(path)
            f.lines.close()  # type: ignore[attr-defined]
            logger.info("follow: %s is gone; no longer followed", path)

    def _start_resumed(self) -> None:
        """A follower for each file an earlier run followed, where it left it (in a rotated sibling, maybe)."""
        for name, (at, mark) in (self._resume.starts.items() if self._resume is not None else ()):
            f = _Follower(Path(name), iter(()), FilePosition(resumable=True), start=mark)
            f.lines = follow(name, self.stats, stop=self.stop, poll_interval=0.0, position=f.position, resume=at)
            self.followers[Path(name)] = f
            self._read.add((mark.dev, mark.ino))  # not a new file under another name (a dated rotation)

    def _replay(self) -> Iterator[str | None]:
        """The earlier run's turns again, in order; a `None` (and live reading) if a file ends before them."""
        for name, end in self._resume.turns if self._resume is not None else ():
            want = end - self.line
            f = self.followers.get(Path(name))
            if want <= 0 or f is None:
                continue
            n = 0
            self._begin_turn(f)
            for line in f.lines:
                if line is None:
                    break
                yield line
                n += 1
                if n >= want:
                    break
            self._end_turn(f, n)
            if n < want:
                self.replay_broken = True
                logger.warning("follow: %s ends %d line(s) before where the earlier run read it to (rewritten "
                               "since?); going on from here", name, want - n)
                yield None
                return

    def __iter__(self) -> Iterator[str | None]:
        self._start_resumed()
        self._scan()
        yield from self._replay()
        while not self.stop.is_set():
            if self.clock() - self._scanned >= self.rescan:
                self._drop_gone()
                self._scan()
            got = False
            for f in list(self.followers.values()):
                n, f.at_end = 0, False
                self._begin_turn(f)
                for line in f.lines:
                    if line is None:
                        f.at_end = True
                        break
                    got = True
                    yield line
                    n += 1
                    if n >= TURN_LINES or self.stop.is_set():
                        break
                self._end_turn(f, n)
                if self.stop.is_set():
                    break
            if not got:
                yield None
                self.stop.wait(self.poll_interval)
        for f in self.followers.values():  # stopped: each yields at most its unterminated last line, then ends
            n = 0
            self._begin_turn(f)
            for line in f.lines:
                if line is not None:
                    yield line
                    n += 1
            self._end_turn(f, n)
