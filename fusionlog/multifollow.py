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
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fusionlog.data.logfiles import expand_log_source, is_multi_source
from fusionlog.errors import ConfigError
from fusionlog.follow_state import FilePosition
from fusionlog.stream import follow
from fusionlog.types import ReadStats

logger = logging.getLogger(__name__)

#: Name endings of files that do not grow line by line (a rotation's compressed copies).
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
#: Lines one file may yield before the next file gets its turn.
TURN_LINES = 4096


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


class MultiFollow:
    """The stream of lines of every live file of `sources`; iterate it for lines and `None` heartbeats (all files
    quiet for a poll). Runs until `stop`."""

    def __init__(self, sources: Sequence[str], stats: ReadStats | None = None, *,
                 stop: threading.Event | None = None, poll_interval: float = 0.25, from_end: bool = False,
                 rescan: float = 5.0, clock=time.monotonic) -> None:
        self.sources = list(sources)
        self.stats = stats if stats is not None else ReadStats()
        self.stop = stop or threading.Event()
        self.poll_interval = poll_interval
        self.rescan = rescan
        self.clock = clock
        self.followers: dict[Path, _Follower] = {}
        self._read: set[tuple[int, int]] = set()  # (device, inode) of every file a follower has opened
        self._from_end = from_end
        self._scanned = float("-inf")

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
        for path in live_files(self.sources):
            if path in self.followers:
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in self._read:  # a renamed file some follower read (a dated rotation)
                continue
            f = _Follower(path, iter(()))
            f.lines = follow(path, self.stats, stop=self.stop, poll_interval=0.0,
                             from_end=self._from_end and first, position=f.position)
            self.followers[path] = f
            if not first:
                logger.info("follow: %s appeared; reading it from the top", path)
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

    def __iter__(self) -> Iterator[str | None]:
        self._scan()
        while not self.stop.is_set():
            if self.clock() - self._scanned >= self.rescan:
                self._drop_gone()
                self._scan()
            got = False
            for f in list(self.followers.values()):
                n, f.at_end = 0, False
                for line in f.lines:
                    if line is None:
                        f.at_end = True
                        break
                    got = True
                    yield line
                    n += 1
                    if n >= TURN_LINES or self.stop.is_set():
                        break
                if self.stop.is_set():
                    break
            if not got:
                yield None
                self.stop.wait(self.poll_interval)
        for f in self.followers.values():  # stopped: each yields at most its unterminated last line, then ends
            for line in f.lines:
                if line is not None:
                    yield line
