"""Crash-safe file writes (a temp name in the same folder, then a rename), the versioned files operators keep
beside an artifact (mutes, baselines), read with errors that name them, an output folder checked before a job's
work, and a lock that keeps a second process off a journal or state file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

T = TypeVar("T")


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc), else by a set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(tmp: str | Path) -> None:
    """Give a temp file (mkstemp makes it 0600) the mode `open()` would have, before it is renamed into place.

    Why: an artifact trained by one user is served by another (a service account, a container's user); with
    mkstemp's 0600 every JSON file of it was unreadable there, and so was a `detect --metrics-file` to the
    collector that reads it.
    """
    os.chmod(tmp, 0o666 & ~_umask())


def publish_tree(folder: str | Path) -> None:
    """Give a folder written by another library (safetensors' `save_file`, `mkdtemp`: 0600 files in a 0700 folder)
    and everything in it the modes `open()` and `mkdir()` would have: a LoRA adapter, a converted LLM in a
    shared cache."""
    umask = _umask()
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def check_out_dir(path: Path | str, what: str) -> Path:
    """`path`, once it is clear the job could create or write it: a `ConfigError` naming `what` (the flag) and why
    otherwise. Nothing is created: a job refused later for another reason leaves no empty folder. Why: a job
    finds out it cannot write its output before its work, not after."""
    from fusionlog.errors import ConfigError

    path = Path(path)
    probe = path
    while not probe.exists():  # the nearest folder that is there: where the first mkdir will happen
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{what} {path}: {'it' if probe == path else probe} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {probe} is not writable")
    return path


def atomic_write_bytes(path: Path, data: bytes, durable: bool = False) -> None:
    """`durable`: on disk before the rename (fsync), for a file a power loss must not leave empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, durable: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    """`indent=None`: compact, for files of many numbers (vectors) that no one reads by eye."""
    seps = None if indent is not None else (",", ":")
    text = json.dumps(obj, indent=indent, separators=seps, sort_keys=True, ensure_ascii=False, default=_default)
    atomic_write_text(path, text + "\n")


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent)
    os.close(fd)
    try:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Swap a fully written temp folder into place; the old folder survives until the swap."""
    final_dir = Path(final_dir)
    old = final_dir.with_name(f".{final_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)


def _default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime ns, size) of a file, None without one: what tells a running service that an operator changed it."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def open_appending(path: Path | str, what: str, logger=None) -> IO[str]:
    """`path` opened to append JSON lines to, after cutting a torn last line a killed writer left (without its
    newline). Why: the next line would be glued to it, and a JSONL reader would fail on both; the verdict it was
    is written again by a run that resumes (`--state`, `--journal`: at least once) or was lost with the process."""
    path = Path(path)
    cut = cut_torn_line(path)
    if cut and logger is not None:
        logger.warning("%s %s: cut a torn last line (%d bytes) a killed run left, before appending", what, path, cut)
    return open(path, "a", encoding="utf-8")  # noqa: SIM115


def append_rows(path: Path, rows: str, sync: bool = True) -> None:
    """Append `rows` (whole lines) to `path`, flushed (and synced unless `sync` is False), on a line of their own.
    Why: a write a full disk cut short left a row without its newline, and the caller writes those rows again at its
    next try; glued to the cut row they would spoil it and the first of them. On a fresh line the cut row spoils
    only itself (the readers of these files skip a row they cannot parse). One byte read, not `cut_torn_line`'s scan:
    this runs for every close a follow logs."""
    data = rows.encode("utf-8")
    with open(path, "a+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end and os.pread(fh.fileno(), 1, end - 1) != b"\n":
            data = b"\n" + data
        fh.write(data)
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def cut_torn_line(path: Path) -> int:
    """Truncate `path` after its last newline; the bytes cut (0: none, no such file, or not a regular file: a pipe
    or a terminal, such as /dev/stdout, is written to as it is)."""
    if not Path(path).is_file():
        return 0
    try:
        fh = open(path, "rb+")  # noqa: SIM115
    except FileNotFoundError:
        return 0
    with fh:
        size = fh.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            fh.seek(start)
            chunk = fh.read(end - start)
            at = chunk.rfind(b"\n")
            if at >= 0:
                end = start + at + 1
                break
            end = start
        if end < size:
            fh.truncate(end)
        return size - end


def read_versioned_list(path: Path, version: int, key: str, parse: Callable[[dict], T], what: str) -> list[T]:
    """`parse` of each item of `{"version": version, key: [...]}` in `path` ([] without the file); a malformed or
    other-version file is an `ArtifactError` naming it (an operator's file beside an artifact: mutes, baseline)."""
    from fusionlog.errors import ArtifactError

    path = Path(path)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != version:
            raise ValueError(f"version {data.get('version')!r}, expected {version}")
        return [parse(item) for item in data[key]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path}: unreadable {what} file ({exc}); fix or delete it") from exc


def hold_lock(lock_path: Path, busy: Callable[[str], str]) -> IO[str]:
    """Hold `lock_path` for this process (released when it exits, however it exits), with the holder's pid in it;
    `ConfigError(busy(pid))` when another process holds it. Why: two processes sharing one journal or one state
    file would write over each other's progress."""
    import fcntl

    from fusionlog.errors import ConfigError

    fh = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held while running
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        raise ConfigError(busy(holder)) from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh
