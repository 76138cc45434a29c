"""Where a `detect --follow DIR|'GLOB'|FILE...` stopped (`--state FILE`): the place of a folder's follow.

Why: a folder follow (`fusionlog.multifollow`) reads many files into one stream, and a session keyed by an id
gathers lines from several of them; killed, it lost its open sessions and read every file again from the top. A
one-file state (`fusionlog.follow_state`) keeps a point in its file; a folder's keeps a point in each file and the
*order* the files' lines were read in since the resume mark (the turns), because a replay that interleaved them
otherwise would build other sessions. So the state holds:

* the resume mark: a stream line at or before the first line of the oldest open session, and each followed file's
  point at that line (`starts`; a file first opened later: where it began);
* the turns since the mark, in a file beside the state (`STATE.turns`), appended to and synced before the state
  that counts on them is written, and rewritten without the turns before the mark once most of it is old;
* `done`, the wall-idle closes and the size closes, and the split keys' part numbers, as a one-file state has
  them (the turn file needs no size close: one after the last save is of a session begun after the mark, which
  the replay fills up by itself);
* each file's point at `done` (`now`), and the files the followers left at a rotation (`read`).

A restart reads the turns again from each file's start, and then goes on live, new files included. Files are
found by identity (a rotation while it was down renames them); a file the replay needs that is gone or rewritten
makes the replay impossible: the run then goes on from each file's point at `done` (no line read twice, none
skipped) and says how many open sessions were lost. A file an earlier run read (by identity and first bytes,
under any name) is not taken for a new one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fusionlog.errors import ConfigError
from fusionlog.follow_state import (
    STATE_VERSION,
    FollowState,
    Mark,
    ResumeAt,
    checked_carry,
    closes_from_json,
    cuts_from_json,
    cuts_json,
    damaged,
    ends_from_json,
    locate,
    mark_from_json,
    parts_from_json,
    state_json,
)
from fusionlog.io import append_rows, atomic_write_text
from fusionlog.multifollow import FolderResume, MultiFollow
from fusionlog.state_fields import BadField, field_of, keyed, listed, whole

logger = logging.getLogger(__name__)

#: Turns in the turn file before it is rewritten without those before the mark (when they are most of it).
COMPACT_TURNS = 10_000
#: Files left at a rotation that the state remembers at most (the newest).
MAX_READ = 256


@dataclass(frozen=True)
class FolderMark:
    """A point in the stream of a folder follow: its line, and each file's point there."""

    line: int
    files: dict[str, Mark] = field(default_factory=dict)
    phase: int = 0  # the stream's line-window phase there (also in `carry`; a state of stop 28 has only this)
    carry: dict = field(default_factory=dict)  # the sessionizer's `StreamCarry` there, as JSON


def _marks_by_name(obj, name: str) -> dict[str, Mark]:
    """A folder state's file points (`starts`, `now`: file name -> `Mark`), each checked; BadField otherwise."""
    return {key: mark_from_json(m, f"{name}[{json.dumps(key)}]") for key, m in keyed(obj, name).items()}


class FolderPosition:
    """`FollowState`'s view of a `MultiFollow` (what `FilePosition` is for one file)."""

    def __init__(self) -> None:
        self.base = 0
        self.follow: MultiFollow | None = None
        self.origin: FolderMark | None = None

    @property
    def ready(self) -> bool:
        return self.follow is not None and self.follow.ready

    @property
    def line(self) -> int:
        return self.follow.line_now() if self.follow is not None else self.base

    def mark(self) -> FolderMark:
        assert self.follow is not None
        return FolderMark(self.follow.line_now(), self.follow.positions())


class TurnFile:
    """The record of the order things happened in since the resume mark: one line per turn (`end<TAB>file number`;
    a file's name is given once, on a line `=number<TAB>name<TAB>where it began`, before its first turn: a file
    first opened after the last save is not in the state's `starts`) and per wall-idle close
    (`c<TAB>line<TAB>keys as JSON`). Appended to before verdicts are written (`FolderFollowState.recording`), so a
    restart reads again the lines of every verdict written in the order they were read, including those written
    after the last save of the state; rewritten without what is before the mark once that is most of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved_end = 0  # the stream line the last turn written ends at
        self.count = 0  # turns in the file
        self._no: dict[str, int] = {}

    def append(self, turns: list[tuple[str, int]], closes: list[tuple[int, list[str]]] = (),
               origins: dict[str, Mark] | None = None, *, sync: bool = True) -> None:
        new = [(name, end) for name, end in turns if end > self.saved_end]
        if not new and not closes:
            return
        parts = []
        fresh: dict[str, int] = {}  # names given their number by this write (kept only once it is written)
        for name, end in new:
            no = self._no.get(name, fresh.get(name))
            if no is None:
                no = fresh[name] = len(self._no) + len(fresh)
                began = (origins or {}).get(name)
                where = f"\t{state_json(asdict(began))}" if began is not None else ""
                parts.append(f"={no}\t{state_json(name)}{where}\n")
            parts.append(f"{end}\t{no}\n")
        parts += [f"c\t{line}\t{state_json(keys)}\n" for line, keys in closes]
        append_rows(self.path, "".join(parts), sync)
        self._no.update(fresh)
        if new:
            self.saved_end = new[-1][1]
            self.count += len(new)

    def rewrite(self, turns: list[tuple[str, int]], closes: list[tuple[int, list[str]]],
                origins: dict[str, Mark] | None = None) -> None:
        """The file again with only `turns` and `closes` (those after the mark the state on disk has)."""
        self._no, self.count, self.saved_end = {}, 0, 0
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path, real = tmp, self.path
        try:
            tmp.unlink(missing_ok=True)
            self.append(turns, closes, origins)
            tmp.touch()
            os.replace(tmp, real)
        finally:
            self.path = real

    @staticmethod
    def read(path: Path, after: int) -> tuple[list[tuple[str, int]], list[tuple[int, list[str]]], dict[str, Mark]]:
        """(turns, closes, where each named file began) after stream line `after`. A torn last line (a crash
        mid-append) ends them; a row that does not parse (a write cut short, whose rows were written again whole
        after it) is skipped, with a warning."""
        names: dict[str, str] = {}
        turns: list[tuple[str, int]] = []
        closes: list[tuple[int, list[str]]] = []
        origins: dict[str, Mark] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return turns, closes, origins
        skipped = 0
        for row in text.splitlines(keepends=True):
            if not row.endswith("\n"):
                break
            head, _, rest = row.rstrip("\n").partition("\t")
            try:
                if head.startswith("="):
                    name, _, began = rest.partition("\t")
                    names[head[1:]] = str(json.loads(name))
                    if began:  # a turn file of stop 27 has none
                        origins[names[head[1:]]] = mark_from_json(json.loads(began), "origin")
                elif head == "c":
                    line, _, keys = rest.partition("\t")
                    if int(line) > after:
                        closes.append((int(line), [str(k) for k in json.loads(keys)]))
                elif (end := int(head)) > after:
                    turns.append((names[rest], end))
            except (KeyError, TypeError, ValueError):
                skipped += 1
        if skipped:
            logger.warning("%s: %d row(s) could not be read (a write cut short, such as on a full disk) and are "
                           "skipped", path, skipped)
        return turns, closes, origins


class FolderFollowState(FollowState):
    """The state file of a folder's follow (`detect --follow DIR --state FILE`). Attach the `MultiFollow` built
    from `resume_folder` with `attach` before reading."""

    def __init__(self, state_path: Path | str, sources: list[str], clock=None) -> None:
        self.resume_folder: FolderResume | None = None
        self.turn_file = TurnFile(Path(str(state_path) + ".turns"))
        self._known: list[Mark] = []  # files an earlier run read (their points), not to be taken for new ones
        self._read: list[Mark] = []  # of those, the ones its followers left at a rotation (and earlier runs')
        self._rewritten = False
        super().__init__(state_path, sources, **({"clock": clock} if clock is not None else {}))

    @staticmethod
    def _identity(followed):
        return [str(Path(s).absolute()) for s in followed]

    @staticmethod
    def _new_position():
        return FolderPosition()

    def attach(self, follow: MultiFollow) -> None:
        self.position.follow = follow
        self.position.origin = FolderMark(self.position.base)

    # -- start -------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        obj = self._read_json()
        if obj is None:
            self.turn_file.path.unlink(missing_ok=True)  # a turn file of a state moved away is not this one's
            return
        if obj.get("followed") != self.followed:
            raise ConfigError(f"--state {self.path}: it is the state of {obj.get('followed')}, not {self.followed}; "
                              f"give each follow a state file of its own")
        try:
            done = whole(field_of(obj, "done", "done"), "done")
            mark = keyed(field_of(obj, "mark", "mark"), "mark")
            line = whole(field_of(mark, "line", "mark.line"), "mark.line", 0, done)
            carry = checked_carry(FolderMark(line, phase=whole(field_of(mark, "phase", "mark.phase"), "mark.phase"),
                                             carry=keyed(mark.get("carry", {}), "mark.carry")), "mark")
            starts = _marks_by_name(field_of(obj, "starts", "starts"), "starts")
            now = _marks_by_name(field_of(obj, "now", "now"), "now")
            read = [mark_from_json(m, f"read[{i}]") for i, m in enumerate(listed(field_of(obj, "read", "read"),
                                                                                  "read"))]
            closes = closes_from_json(field_of(obj, "closes", "closes"))
            cuts = cuts_from_json(field_of(obj, "cuts", "cuts", []))  # a state of stop 27 has none
            parts = parts_from_json(field_of(obj, "parts", "parts", {}))
            ends = ends_from_json(field_of(obj, "ends", "ends", []))
            open_sessions = whole(field_of(obj, "open_sessions", "open_sessions"), "open_sessions")
        except BadField as exc:
            raise damaged(self.path, exc) from None
        try:
            turns, logged, began = TurnFile.read(self.turn_file.path, line)
        except ValueError as exc:  # not UTF-8 text
            raise ConfigError(f"--state {self.path}: {self.turn_file.path} is unreadable ({exc}); move both away to "
                              f"start over") from None
        starts = {**began, **starts}  # files first opened after the last save: where the turn file says
        self._done = done
        found = {name: locate(m, Path(name)) for name, m in starts.items()}
        # the turns are read again up to the first whose file is not found: past `done` (turns recorded before
        # verdicts written after the last save) the rest is read live; before it, the open sessions are lost
        cut = next((i for i, (name, _) in enumerate(turns) if found.get(name) is None), len(turns))
        reach = turns[cut - 1][1] if cut else line
        missing = []
        if reach < done:
            missing.append(turns[cut][0] if cut < len(turns) else
                           f"{self.turn_file.path} (its turns reach line {reach} of {done})")
        turns = turns[:cut]
        closes = sorted({(at, tuple(keys)) for at, keys in [*closes, *logged] if at <= max(reach, done)})
        self._read = read
        self._known = [*starts.values(), *now.values(), *read]
        if missing:
            logger.warning("--state %s: cannot read lines %d-%d again: %s gone or rewritten; going on from where "
                           "each file stopped%s", self.path, line + 1, done, ", ".join(missing),
                           f"; {open_sessions} open session(s) lost" if open_sessions else "")
            found_now = {name: locate(m, Path(name)) for name, m in now.items()}
            self.position.base = done
            self.resume_folder = FolderResume(done, {name: (ResumeAt(str(at), m.offset, m.file_line), m) for
                                                     name, m in now.items() if (at := found_now[name]) is not None},
                                              [], self._known)
            self.turn_file.path.unlink(missing_ok=True)
            return
        self.position.base, self.carry = line, carry
        self.replay_through = done
        self._replaying([(at, list(keys)) for at, keys in closes], cuts, parts, ends)
        self.resume_folder = FolderResume(line, {name: (ResumeAt(str(at), m.offset, m.file_line), m) for
                                                 name, m in starts.items() if (at := found[name]) is not None},
                                          turns, self._known)
        try:  # what the replay reads again: its own turns are these
            self.turn_file.rewrite(turns, [(at, list(keys)) for at, keys in closes], starts)
        except OSError as exc:
            raise ConfigError(f"--state {self.path}: cannot write {self.turn_file.path} ({exc})") from None
        logger.info("--state %s: resuming %d file(s) at line %d: reading %d line(s) again for %d open session(s)",
                    self.path, len(self.resume_folder.starts), line, reach - line, open_sessions)

    @property
    def resumed(self) -> bool:
        return self.resume_folder is not None

    def _closes_after(self, line: int) -> list[tuple[int, list[str]]]:
        """The wall-idle closes after stream line `line`: the turn file's and those not written to it yet. Read from
        the file when it is rewritten: the process keeps no copy (stop 29 kept every close since a pinned mark)."""
        return [*TurnFile.read(self.turn_file.path, line)[1], *self._unsaved_closes]

    # -- saving ------------------------------------------------------------------------------------------------
    def recording(self, sz) -> None:
        """Verdicts are about to be written: the order their lines were read in (and the wall-idle closes) goes to
        the turn file first (not synced: a killed process's writes stay), so that if the process dies before the
        next save, the restart scores them again from the same lines (at least once, and alike)."""
        follow = self.position.follow
        if follow is None:
            return
        try:
            self.turn_file.append(follow.turns.after(self.turn_file.saved_end) + follow.current_turn(),
                                  self._unsaved_closes, follow.origins(), sync=False)
            self._unsaved_closes = []
        except OSError as exc:
            logger.warning("--state %s: cannot write %s (%s)", self.path, self.turn_file.path, exc)

    def save(self, sz) -> None:
        follow = self.position.follow
        if not self._marks or follow is None:
            return
        mark = self._marks[0]
        origins = follow.origins()
        starts = {**{name: m for name, m in origins.items() if name not in mark.files}, **mark.files}
        left = follow.left()
        idents = {(m.dev, m.ino) for m in left}
        read = [*(m for m in self._read if (m.dev, m.ino) not in idents), *left][-MAX_READ:]
        obj = {"fusionlog_follow_state": STATE_VERSION, "followed": self.followed,
               "mark": {"line": mark.line, "phase": mark.phase, "carry": mark.carry},
               "starts": {name: asdict(m) for name, m in starts.items()},
               "now": {name: asdict(m) for name, m in follow.positions().items()},
               "read": [asdict(m) for m in read], "done": self._done, "open_sessions": sz.open_sessions,
               "closes": [], "cuts": cuts_json(self._cuts),  # the closes are in the turn file (as a `CloseLog`'s)
               "parts": sz.split_parts(), "ends": [list(end) for end in self._ends]}
        partial = follow.current_turn()  # the turn going on: its lines so far
        try:
            if follow.replay_broken and not self._rewritten:  # its turns are not the earlier run's after the break
                self.turn_file.rewrite(follow.turns.after(mark.line) + partial, self._closes_after(mark.line),
                                       origins)
                self._rewritten = True
            else:
                self.turn_file.append(follow.turns.after(self.turn_file.saved_end) + partial, self._unsaved_closes,
                                      origins)
            self._unsaved_closes = []
            atomic_write_text(self.path, state_json(obj) + "\n", durable=True)
        except OSError as exc:  # a full disk must not stop detection: the next save tries again
            logger.warning("--state %s: cannot write (%s)", self.path, exc)
            return
        follow.turns.prune(mark.line)
        if self.turn_file.count > COMPACT_TURNS and self.turn_file.count > 2 * len(follow.turns) + 2:
            try:
                self.turn_file.rewrite(follow.turns.after(mark.line) + partial, self._closes_after(mark.line),
                                       origins)
            except OSError as exc:
                logger.warning("--state %s: cannot rewrite %s (%s)", self.path, self.turn_file.path, exc)
