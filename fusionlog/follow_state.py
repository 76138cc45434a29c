"""Where a `detect --follow` stopped (`--state FILE`), so a restart loses no line and no open session.

Why: killed (a deploy, the OOM killer, a reboot), a follow started again at the top of its file (every verdict a
second time) or, with `--from-end`, past the lines written while it was down and without the sessions it held
open. Unlike serve's ingest (`fusionlog.journal`) the followed file is itself the record of the lines: the state
only says where in it a restart begins and what was already written:

* the *resume mark*: a point in a file (its device and inode, a hash of its first bytes, a byte offset and the
  lines before it) at or before the first line of the oldest open session: reading again from there rebuilds
  every open session;
* `done`: the last line whose finished sessions have their verdicts written. Sessions the replay finishes at
  or before it close silently; later ones are scored (at least once: none lost);
* the wall-idle closes and the size closes (`max_events_per_session`) since the mark, replayed at the lines where
  they happened: a session open at the mark and closed by size later holds fewer events in the replay, which
  would not fill it up where the first run did. The wall-idle closes go to a log beside the state (`CloseLog`,
  FILE.closes), appended to before their verdicts are written.

The state is rewritten (atomically, synced to disk) at most once a second, each time after the verdicts so far
are written; a clean stop writes it last and leaves the open sessions open for the next run instead of scoring
them cut short. A restart finds the file by its identity under its own name or, rotated while the detector was
down, as a sibling (`app.log.1`, `app.log-20261128`); it reads that file's rest, then the path's new file, as a
running follow does across a rotation. A file that is gone (compressed, deleted) or rewritten since starts over,
with a warning that says what was lost.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from operator import attrgetter
from pathlib import Path
from typing import Any

from fusionlog.errors import ConfigError
from fusionlog.io import append_rows, atomic_write_text, hold_lock
from fusionlog.state_fields import BadField, field_of, keyed, listed, text, whole

logger = logging.getLogger(__name__)

STATE_VERSION = 1
#: The bytes of a file's head whose hash tells it from a later file that reuses its inode.
HEAD_BYTES = 1024
#: Seconds between two rewrites of the state file at most (a crash re-reads at most this much more).
SAVE_INTERVAL = 1.0
#: Seconds between two resume marks at most: a restart re-reads up to this much before the oldest open session.
MARK_INTERVAL = 0.5
#: Marks kept at most: past it every other one between the first and the last goes, so a session open for hours
#: costs a bounded list (a restart then reads a little more again).
MAX_MARKS = 256
#: Files a follower has left (rotated away) that a folder's state remembers, so a restart does not read them again.
MAX_LEFT = 32
#: Closes a close log holds at least before it is rewritten without those before the mark (then each time it has
#: doubled since its last rewrite).
COMPACT_CLOSES = 1_000


@dataclass(frozen=True)
class ResumeAt:
    """Where `follow` starts: the file to open first (the followed path or a rotated sibling) and the point in it."""

    path: str
    offset: int
    file_line: int


@dataclass(frozen=True)
class Mark:
    """A point in a followed file, after `line` lines of the stream."""

    line: int
    path: str
    dev: int
    ino: int
    head_sha256: str
    head_len: int
    offset: int  # bytes before the point
    file_line: int  # the file's lines before the point
    phase: int = 0  # the stream's line-window phase there (also in `carry`; a state of stop 28 has only this)
    carry: dict = field(default_factory=dict, hash=False)  # the sessionizer's `StreamCarry` there, as JSON


@dataclass
class FilePosition:
    """Where `follow` is (`fusionlog.stream.follow`): the file it has open, and the end of the last line it
    yielded, read from the follow itself when asked (nothing is spent per line)."""

    base: int = 0  # stream lines before this run's first
    path: str = ""
    ident: tuple[int, int] | None = None
    fd: int | None = None
    recoded: bool = False
    origin: Mark | None = None  # where this run began reading
    head: bytes = b""  # the open file's first bytes (up to HEAD_BYTES), as last read
    idents: set[tuple[int, int]] = field(default_factory=set)  # every file it has been in (a rotation's too)
    left: list[Mark] = field(default_factory=list)  # the files it left (a rotation's), each at its end
    resumable: bool = True  # a next run goes on from here: an unterminated last line is left for it at a stop
    _where: Callable[[], tuple[int, int, int]] | None = None  # the follow's (offset, file_line, lines)
    _last: tuple[int, int, int] = (0, 0, 0)  # what it said when it ended

    def track(self, where: Callable[[], tuple[int, int, int]]) -> None:
        self._where = where

    @property
    def ready(self) -> bool:
        """A file has been opened: there is a place to keep."""
        return self.ident is not None and self.origin is not None

    def opened(self, path: str, ident: tuple[int, int], fd: int, recoded: bool) -> None:
        self.path, self.ident, self.fd, self.recoded, self.head = path, ident, fd, recoded, b""
        self.idents.add(ident)
        if self.origin is None:
            self.origin = self.mark()

    def leaving(self) -> None:
        """The open file is about to be closed (rotated away): its head is read while it still can be, and it is
        remembered as read to its end."""
        if self.fd is None or self.ident is None:
            return
        self.left = [*self.left[-(MAX_LEFT - 1):], self.mark()]
        self.fd = None

    def closed(self) -> None:
        """The follow ended: marks go on from where it was."""
        if self._where is not None:
            self._last, self._where = self._where(), None
        self.fd = None

    def now(self) -> tuple[int, int, int]:
        """(byte offset, the file's lines, this run's lines) after the last line yielded."""
        return self._where() if self._where is not None else self._last

    @property
    def line(self) -> int:
        return self.base + self.now()[2]

    def mark(self) -> Mark:
        if len(self.head) < HEAD_BYTES and self.fd is not None:  # a young file's head is still growing
            self.head = os.pread(self.fd, HEAD_BYTES, 0)
        dev, ino = self.ident or (0, 0)
        offset, file_line, lines = self.now()
        return Mark(self.base + lines, self.path, dev, ino, hashlib.sha256(self.head).hexdigest(), len(self.head),
                    offset, file_line)


@dataclass
class Checkpoint:
    """What the state file holds."""

    followed: str
    mark: Mark
    done: int
    open_sessions: int = 0
    closes: list[tuple[int, list[str]]] = field(default_factory=list)  # (line, keys) of wall-idle closes
    cuts: list[tuple[int, list[tuple[str, int]]]] = field(default_factory=list)  # (line, (key, part)s): size closes
    parts: dict[str, int] = field(default_factory=dict)  # key -> next part, of the keys the size limit split
    ends: list[tuple[int, str, int]] = field(default_factory=list)  # (line, key, part): continuations closed otherwise

    def to_json(self) -> dict:
        return {"fusionlog_follow_state": STATE_VERSION, "followed": self.followed, "mark": asdict(self.mark),
                "done": self.done, "open_sessions": self.open_sessions,
                "closes": [[line, keys] for line, keys in self.closes], "cuts": cuts_json(self.cuts),
                "parts": self.parts, "ends": [list(end) for end in self.ends]}

    @classmethod
    def from_json(cls, obj: dict, where: Path) -> Checkpoint:
        """The state in `obj`, each field checked (`fusionlog.state_fields`): one ConfigError naming the state file
        and the field for any of the wrong type or out of range."""
        if not isinstance(obj, dict) or obj.get("fusionlog_follow_state") != STATE_VERSION:
            raise ConfigError(f"--state {where}: not a follow state file of version {STATE_VERSION}")
        try:
            done = whole(field_of(obj, "done", "done"), "done")
            return cls(text(field_of(obj, "followed", "followed"), "followed"),
                       mark_from_json(field_of(obj, "mark", "mark"), "mark", done), done,
                       whole(field_of(obj, "open_sessions", "open_sessions"), "open_sessions"),
                       closes_from_json(field_of(obj, "closes", "closes")),
                       cuts_from_json(field_of(obj, "cuts", "cuts", [])),  # a state of stop 27 or before has none
                       parts_from_json(field_of(obj, "parts", "parts", {})),
                       ends_from_json(field_of(obj, "ends", "ends", [])))
        except BadField as exc:
            raise damaged(where, exc) from None


def damaged(where: Path, exc: BadField) -> ConfigError:
    """The one error a state file with a bad field gives: the file, the field, what it holds and what it should."""
    return ConfigError(f"--state {where}: damaged: {exc}; fix it or move it away to start over")


def mark_from_json(obj: Any, name: str, done: int | None = None) -> Mark:
    """The `Mark` saved at `name` (`mark`, `starts["a.log"]`), each field checked; BadField for one that is not.
    `done`: the state's last written line, which the mark cannot be past."""
    obj = keyed(obj, name)

    def number(key: str, most: int | None = None, *default: int) -> int:
        return whole(field_of(obj, key, f"{name}.{key}", *default), f"{name}.{key}", 0, most)

    mark = Mark(number("line", done), text(field_of(obj, "path", f"{name}.path"), f"{name}.path"),
                number("dev"), number("ino"), _sha256(field_of(obj, "head_sha256", f"{name}.head_sha256"), name),
                number("head_len", HEAD_BYTES), number("offset"), number("file_line"), number("phase", None, 0),
                keyed(field_of(obj, "carry", f"{name}.carry", {}), f"{name}.carry"))
    checked_carry(mark, name)
    return mark


def _sha256(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise BadField(f"{name}.head_sha256", value, "64 hex digits")
    return value


def checked_carry(mark, name: str):
    """`mark_carry`, with a BadField naming `name.carry` for a carry that is not one."""
    try:
        return mark_carry(mark)
    except (TypeError, ValueError, AttributeError) as exc:
        raise BadField(f"{name}.carry", mark.carry, f"the sessionizer's carry ({type(exc).__name__}: {exc})") from None


def state_json(obj: Any) -> str:
    """`obj` as the JSON of a state, its turn file or its close log: ASCII, non-ASCII characters as \\uXXXX escapes.

    Why: a file name that is not UTF-8 (`bad\\xff.log`) is held by Python with surrogate escapes, which UTF-8 cannot
    encode: the save failed with UnicodeEncodeError. Escaped, the name goes to disk and `json.loads` gives back the
    same string, so a restart opens the same file."""
    return json.dumps(obj, ensure_ascii=True)


def replay_starts(points: list, line_of: Callable[[Any], int], oldest: int, most: int) -> list:
    """Of `points` (places a replay may begin, ascending by line), those still needed: the last one before line
    `oldest` (the oldest open session's first) and those after it; past `most` of them, every other one between the
    first and the last goes, so a session open for hours costs a bounded list (a restart then reads a little more).
    Shared by a state's resume marks and a journal's post ends (`fusionlog.journal`)."""
    first = max((i for i, p in enumerate(points) if line_of(p) < oldest), default=0)
    kept = points[first:]
    if len(kept) > most:
        kept = [kept[0], *kept[2:-1:2], kept[-1]]
    return kept


def mark_carry(mark):
    """The sessionizer's `StreamCarry` saved with a mark (`Mark`, `FolderMark`); TypeError/ValueError when damaged."""
    from fusionlog.stream import StreamCarry  # (stream imports this module)

    return StreamCarry.from_json({"phase": mark.phase, **mark.carry})


def with_carry(mark, carry):
    """`mark` (`Mark`, `FolderMark`) with the sessionizer's `StreamCarry` there."""
    return replace(mark, phase=carry.phase, carry=carry.to_json())


def cuts_json(cuts: list[tuple[int, list[tuple[str, int]]]]) -> list:
    return [[line, [[key, part] for key, part in sessions]] for line, sessions in cuts]


def closes_from_json(rows: Any, name: str = "closes") -> list[tuple[int, list[str]]]:
    """The wall-idle closes a state holds (`[[line, [key, ...]], ...]`); BadField for a row that is not one."""
    out = []
    for i, row in enumerate(listed(rows, name)):
        line, keys = listed(row, f"{name}[{i}]", 2)
        out.append((whole(line, f"{name}[{i}][0]"),
                    [text(key, f"{name}[{i}][1][{j}]") for j, key in enumerate(listed(keys, f"{name}[{i}][1]"))]))
    return out


def cuts_from_json(rows: Any, name: str = "cuts") -> list[tuple[int, list[tuple[str, int]]]]:
    """The size closes a state holds (`cuts_json`); BadField for a row that is not one."""
    out = []
    for i, row in enumerate(listed(rows, name)):
        line, sessions = listed(row, f"{name}[{i}]", 2)
        out.append((whole(line, f"{name}[{i}][0]"),
                    [_key_part(pair, f"{name}[{i}][1][{j}]") for j, pair in enumerate(listed(sessions,
                                                                                            f"{name}[{i}][1]"))]))
    return out


def _key_part(pair: Any, name: str) -> tuple[str, int]:
    key, part = listed(pair, name, 2)
    return text(key, f"{name}[0]"), whole(part, f"{name}[1]")


def ends_from_json(rows: Any, name: str = "ends") -> list[tuple[int, str, int]]:
    """The continuations closed otherwise than by size a state holds (`[line, key, part]`); BadField for a row
    that is not one."""
    out = []
    for i, row in enumerate(listed(rows, name)):
        line, key, part = listed(row, f"{name}[{i}]", 3)
        out.append((whole(line, f"{name}[{i}][0]"), text(key, f"{name}[{i}][1]"), whole(part, f"{name}[{i}][2]")))
    return out


def parts_from_json(obj: Any, name: str = "parts") -> dict[str, int]:
    """The part numbers a state holds (key -> next part); BadField for an object that is not one."""
    return {key: whole(part, f"{name}[{json.dumps(key)}]") for key, part in keyed(obj, name).items()}


def locate(mark: Mark, followed: Path) -> Path | None:
    """The file `mark` points into, if it is still there: under the followed name, or a rotated sibling's. A
    followed symbolic link's target is rotated beside the target (Kubernetes: `/var/log/containers/*.log` link to
    `/var/log/pods/.../0.log`, rotated to `0.log.20261128-120000` there), so its siblings are looked at too."""
    names = [followed, Path(mark.path)]
    for base in dict.fromkeys((str(followed), os.path.realpath(followed))):
        names += sorted(Path(p) for p in glob.glob(glob.escape(base) + "?*"))
    return next((name for name in dict.fromkeys(names) if same_file(mark, name)), None)


def same_file(mark: Mark, name: Path | str) -> bool:
    """`name` is the file `mark` points into: the same device and inode, at least as long, and the same first
    bytes (a file that reuses a deleted one's inode has other ones)."""
    try:
        st = os.stat(name)
    except OSError:
        return False
    if (st.st_dev, st.st_ino) != (mark.dev, mark.ino) or st.st_size < mark.offset:
        return False
    try:
        with open(name, "rb") as fh:
            head = fh.read(mark.head_len)
    except OSError:
        return False
    return hashlib.sha256(head).hexdigest() == mark.head_sha256


class CloseLog:
    """The wall-idle closes since the mark, appended as they happen (FILE.closes beside the state): a line each,
    `LINE<TAB>["key", ...]`.

    Why not in the state's JSON: a session open for hours pins the mark, and every close since is kept. Each
    close was saved before its verdicts were written, a full rewrite of the state each time: at 100,000 closes
    behind the mark a 5 MB JSON and 110 ms a save (stop 28's code, 2 cores), as often as the poll found a
    session idle. Appending costs what the new closes cost (`fusionlog bench state`). The file is the only copy: the
    process keeps none of them (stop 29 kept each in a list while the mark was pinned, some 250 bytes a close). It is
    emptied once past COMPACT_CLOSES when the mark has passed them all (nothing pinned it), and otherwise rewritten
    without those before the mark, read a row at a time, each time it has doubled since it last was: while a session
    pins the mark each rewrite keeps all, and the doubling keeps the cost a close bounded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0  # closes in the file
        self.kept = 0  # ... of them after its last rewrite (or read)
        self.last = 0  # the stream line of its last close
        self.skipped = 0  # rows `read` could not parse (a write cut short)

    def append(self, closes: list[tuple[int, list[str]]]) -> None:
        """Durably (synced), as the state: the verdicts of these closes are written next. After a write that was cut
        short (a full disk: the closes are appended again at the next save) the rows start on a line of their own,
        so the cut row spoils only itself (`read` skips it)."""
        if not closes:
            return
        append_rows(self.path, "".join(f"{line}\t{state_json(keys)}\n" for line, keys in closes))
        self.count += len(closes)
        self.last = max(self.last, *(line for line, _ in closes))

    def rewrite(self, closes: list[tuple[int, list[str]]]) -> None:
        """The file with only `closes` (those after the mark of the state on disk)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        atomic = CloseLog(tmp)
        tmp.unlink(missing_ok=True)
        atomic.append(closes)
        tmp.touch()
        os.replace(tmp, self.path)
        self.count = self.kept = len(closes)

    def tidy(self, mark: int) -> None:
        """After the state was saved with its mark at stream line `mark`: empty the file when the mark has passed every
        close in it, or `compact` it when it has doubled since its last rewrite (both past COMPACT_CLOSES)."""
        if self.count <= COMPACT_CLOSES:
            return
        if mark >= self.last:
            self.rewrite([])
        elif self.count > 2 * self.kept:
            self.compact(mark)

    def compact(self, after: int) -> None:
        """Rewrite the file without the closes at or before stream line `after` (the saved mark), reading and writing
        a row at a time; a torn last row (a crash mid-append) is left out."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        kept = 0
        with open(self.path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as out:
            for row in src:
                if row.endswith("\n") and (close := _close_row(row)) is not None and close[0] > after:
                    out.write(row)
                    kept += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self.count = self.kept = kept

    def read(self, after: int) -> list[tuple[int, list[str]]]:
        """The closes after stream line `after`; a torn last line (a crash mid-append) ends them, and a row that
        does not parse (a write cut short, appended again whole after it) is skipped and counted (`skipped`)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        closes = []
        for row in text.splitlines(keepends=True):
            if not row.endswith("\n"):
                break
            close = _close_row(row)
            if close is None:
                self.skipped += 1
                continue
            self.count += 1
            self.last = max(self.last, close[0])
            if close[0] > after:
                closes.append(close)
        self.kept = len(closes)
        return closes


def _close_row(row: str) -> tuple[int, list[str]] | None:
    """(stream line, keys) of one close log row; None for a row that is not one."""
    line, _, keys = row.rstrip("\n").partition("\t")
    try:
        found = json.loads(keys)
        if not isinstance(found, list):
            return None
        return int(line), [str(k) for k in found]
    except ValueError:
        return None


class FollowState:
    """The state file of one followed file, for `detect_stream`'s checkpoint hooks (a folder's follow has
    `fusionlog.folder_state.FolderFollowState`, built on this one). One process at a time (a lock beside the
    file)."""

    def __init__(self, state_path: Path | str, followed,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(state_path)
        self.followed = self._identity(followed)
        self.clock = clock
        if self.path.is_dir():
            raise ConfigError(f"--state {self.path}: is a directory; give a file name (it is created)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = hold_lock(self.path.with_name(self.path.name + ".lock"), lambda pid: (
                f"--state {self.path}: another detect uses it{f' (pid {pid})' if pid else ''}; give each follow a "
                f"state file of its own"))
        except OSError as exc:
            raise ConfigError(f"--state {self.path}: cannot write there ({exc.strerror or exc})") from None
        self.position = self._new_position()
        self.resume: ResumeAt | None = None
        self.replay_through = 0
        from fusionlog.stream import BLANK_CARRY  # (stream imports this module)

        self.carry = BLANK_CARRY  # the sessionizer's `StreamCarry` at `position.base`
        self.replay_closes: dict[int, list[list[str]]] = {}
        self.replay_cuts: dict[int, list[tuple[str, int]]] = {}  # line -> (key, part) of the size closes there
        self.replay_parts: dict[str, int] = {}  # the next part of each key the size limit had split, at `done`
        self.replay_ends: list[tuple[int, str, int]] = []  # continuations closed otherwise, after the mark
        self._ends: list[tuple[int, str, int]] = []
        self._marks: list[Mark] = []
        self._cuts: list[tuple[int, list[tuple[str, int]]]] = []
        self._done = 0
        self._unsaved_closes: list[tuple[int, list[str]]] = []  # wall-idle closes not written down yet
        self._last_mark = self._last_save = float("-inf")
        self._close_log = CloseLog(Path(str(self.path) + ".closes"))
        try:
            self._load()
        except BaseException:  # a state refused leaves no lock held: the process may open it again once fixed
            self._lock.close()
            raise

    # -- start -------------------------------------------------------------------------------------------------
    @staticmethod
    def _identity(followed):
        """What the state is of, as saved in it (a restart with another must not go on from it)."""
        return Path(followed).absolute()

    @staticmethod
    def _new_position():
        return FilePosition()

    def _read_json(self) -> dict | None:
        """The state file's object (None when there is none yet); a clear error when it cannot be one."""
        if not self.path.exists():
            return None
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--state {self.path}: unreadable ({exc}); move it away to start over") from None
        if not isinstance(obj, dict) or obj.get("fusionlog_follow_state") != STATE_VERSION:
            raise ConfigError(f"--state {self.path}: not a follow state file of version {STATE_VERSION}")
        return obj

    def _load(self) -> None:
        obj = self._read_json()
        if obj is None:
            self._close_log.path.unlink(missing_ok=True)  # the close log of a state moved away is not this one's
            return
        cp = Checkpoint.from_json(obj, self.path)
        if Path(cp.followed) != self.followed:
            raise ConfigError(f"--state {self.path}: it is the state of {cp.followed}, not {self.followed}; give "
                              f"each followed file a state file of its own")
        self._done = self.position.base = cp.done
        found = locate(cp.mark, self.followed)
        if found is None:
            logger.warning("--state %s: %s (where it stopped, line %d) is gone or was rewritten; starting over at "
                           "the top of the file%s", self.path, cp.mark.path, cp.done,
                           f"; {cp.open_sessions} open session(s) lost" if cp.open_sessions else "")
            self._close_log.path.unlink(missing_ok=True)
            return
        logged = self._close_log.read(cp.mark.line)
        if self._close_log.skipped:
            logger.warning("--state %s: %d row(s) of %s could not be read (a write cut short, such as on a full "
                           "disk) and are skipped", self.path, self._close_log.skipped, self._close_log.path)
        self.position.base, self.carry = cp.mark.line, mark_carry(cp.mark)
        self.resume = ResumeAt(str(found), cp.mark.offset, cp.mark.file_line)
        self.replay_through = cp.done
        closes = [(at, list(keys)) for at, keys in sorted({(at, tuple(keys)) for at, keys in [*cp.closes, *logged]})]
        self._replaying(closes, cp.cuts, cp.parts, cp.ends)
        if cp.closes or self._close_log.path.exists():
            # without the closes before the mark, and a row a crash tore (appending after it spoiled the next row); a
            # state of stop 28 kept its closes in the JSON, which the next save leaves out
            try:
                self._close_log.rewrite(closes)
            except OSError as exc:
                raise ConfigError(f"--state {self.path}: cannot write {self._close_log.path} ({exc})") from None
        self._marks = [cp.mark]
        where = "" if found == self.followed else f" (now {found.name}: rotated since)"
        logger.info("--state %s: resuming %s at line %d%s: reading %d line(s) again for %d open session(s)",
                    self.path, cp.mark.path, cp.mark.line, where, cp.done - cp.mark.line, cp.open_sessions)

    @property
    def resumed(self) -> bool:
        return self.resume is not None

    def _replaying(self, closes: list[tuple[int, list[str]]], cuts: list[tuple[int, list[tuple[str, int]]]],
                   parts: dict[str, int], ends: list[tuple[int, str, int]]) -> None:
        """What a replay closes where the earlier run closed it (the wall-idle closes and the size closes), and the
        part numbers it gives: the earlier run's, as its sessions were numbered."""
        self._cuts, self.replay_parts = list(cuts), dict(parts)
        self._ends, self.replay_ends = list(ends), list(ends)
        for line, keys in closes:
            self.replay_closes.setdefault(line, []).append(list(keys))
        for line, sessions in cuts:
            self.replay_cuts.setdefault(line, []).extend(sessions)

    # -- detect_stream's hooks ---------------------------------------------------------------------------------
    def finished(self, line_no: int, sessions: list) -> None:
        """Sessions (`FinishedSession`) closed after line `line_no`, as a replay must know them:
        * closed by wall-clock idleness: the lines do not say so, so a replay closes them there too (saved before
          their verdicts are written: `recording`);
        * closed by size: replayed there (by key and part), as a replay that begins after such a session's first
          line would not fill it up (`StreamSessionizer.cut`);
        * a continuation closed otherwise: it tells a replay from before it the key's part number, which the close
          started over.
        The last two are saved with the next save: a session the replay holds only part of began before the saved
        mark, so it was closed before the save (the mark is at or before the first line of every session open then).
        A wall-idle close is logged at once (`CloseLog`); the state saved before it holds the part its continuation
        had."""
        from fusionlog.stream import CLOSED_WALL_IDLE, numbered_ends, size_closed  # (stream imports this module)

        if wall := [s.key for s in sessions if s.closed_by == CLOSED_WALL_IDLE]:
            self._unsaved_closes.append((line_no, wall))
        if cut := size_closed(sessions):
            self._cuts.append((line_no, [(s.key, s.part) for s in cut]))
        self._ends += [(line_no, s.key, s.part) for s in numbered_ends(sessions)]

    def recording(self, sz) -> None:
        """Verdicts are about to be written: a wall-idle close since the last save is logged first (`CloseLog`), so
        that a restart after a crash closes those sessions where this run did and their verdicts come again alike.
        (The file itself is the order of its lines; a folder's state records the order its files were read in, in
        its turn file: `fusionlog.folder_state`.)"""
        self._log_closes()

    def _log_closes(self) -> None:
        try:
            self._close_log.append(self._unsaved_closes)
            self._unsaved_closes = []
        except OSError as exc:  # a full disk must not stop detection: the next save tries again
            logger.warning("--state %s: cannot write %s (%s)", self.path, self._close_log.path, exc)

    def settled(self, sz, final: bool = False) -> None:
        """Every session `sz` finished so far has its verdict written: move the mark up to the oldest open
        session, and write the state (at most once a second, unless `final`)."""
        pos = self.position
        if not pos.ready:
            return  # no file opened yet: nothing to resume
        line_no = sz.line_no
        if line_no != pos.line:
            logger.debug("--state: %d lines read, %d fed; no mark", pos.line, line_no)
            return
        now = self.clock()
        if not self._marks:
            self._marks.append(with_carry(pos.origin, self.carry))
        oldest = sz.oldest_open_line()
        if oldest is None or final or now - self._last_mark >= MARK_INTERVAL:
            self._marks.append(with_carry(pos.mark(), sz.carry()))
            self._last_mark = now
        if oldest is None:
            self._marks = self._marks[-1:]
        else:
            self._marks = replay_starts(self._marks, attrgetter("line"), oldest, MAX_MARKS)
        self._done = max(self._done, line_no)
        self._forget_through(self._marks[0].line)
        if final or now - self._last_save >= SAVE_INTERVAL:
            self.save(sz)
            self._last_save = now

    def _forget_through(self, start: int) -> None:
        """Drop what a replay from the mark at stream line `start` no longer needs."""
        self._cuts = [(line, sessions) for line, sessions in self._cuts if line > start]
        self._ends = [end for end in self._ends if end[0] > start]

    def save(self, sz) -> None:
        if not self._marks:
            return
        self._log_closes()
        cp = Checkpoint(str(self.followed), self._marks[0], self._done, sz.open_sessions, [], self._cuts,
                        sz.split_parts(), self._ends)
        try:
            atomic_write_text(self.path, state_json(cp.to_json()) + "\n", durable=True)
            if not self._unsaved_closes:
                self._close_log.tidy(self._marks[0].line)  # without the closes before the mark just saved
        except OSError as exc:  # a full disk must not stop detection: the next save tries again
            logger.warning("--state %s: cannot write (%s)", self.path, exc)

    def close(self) -> None:
        self._lock.close()
