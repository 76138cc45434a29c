"""Which log files a command-line source names: one file, every file of a directory, or a glob's matches.

Why: a service's logs are rarely one file. logrotate leaves `app.log`, `app.log.1`, `app.log.2.gz`, ...;
a fleet leaves one file per host. Training and detection read them as one stream, oldest first, so
sessions keyed by an id continue across a rotation and line windows follow the log's own order.

Order: files of one rotation family (same name once a trailing `.N` and `.gz` are cut) go from the
highest rotation number to the live file (`app.log.2.gz`, `app.log.1`, `app.log`); date-stamped names
(`app.log-20261127.gz`) and unrelated files go by name. File times are not used: a copy or an unpacked
archive resets them, names survive.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

from fusionlog.errors import ConfigError

#: characters that make a source a glob pattern rather than a path
GLOB_CHARS = frozenset("*?[")

_ROTATION = re.compile(r"^(?P<family>.+?)(?:\.(?P<n>\d+))?(?P<gz>\.gz)?$")


def is_multi_source(source: str) -> bool:
    """True for a directory or a glob pattern: a source that may name several files. An existing file is
    itself, even with `[` in its name."""
    path = Path(source)
    return not path.is_file() and (bool(GLOB_CHARS & set(source)) or path.is_dir())


def expand_log_source(source: str) -> list[Path]:
    """The log files `source` names, in reading order (oldest first); a clear error when it names none."""
    path = Path(source)
    if not is_multi_source(source):
        return [path]
    if GLOB_CHARS & set(source):
        files = [Path(p) for p in glob.glob(source) if Path(p).is_file() and not Path(p).name.startswith(".")]
        if not files:
            raise ConfigError(f"{source}: the pattern matches no log file")
    else:
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        if not files:
            raise ConfigError(f"{source}: the directory holds no log file (hidden files and subfolders are not read)")
    return sorted(files, key=rotation_key)


def rotation_key(path: Path) -> tuple[str, int, str]:
    """Sort key: family name, then rotation number descending (a live file counts as 0), then the name."""
    m = _ROTATION.match(path.name)
    family = m.group("family") if m else path.name
    n = int(m.group("n")) if m and m.group("n") else 0
    return (str(path.parent / family), -n, path.name)


def source_system_name(source: str, files: list[Path]) -> str:
    """A system name for a source with no --system: a directory's name, else the first file's stem."""
    if Path(source).is_dir():
        name = Path(source).resolve().name
    else:
        name = files[0].name.split(".")[0]
    return safe_name(name.lower(), "logs")


def safe_name(text: str, default: str) -> str:
    """`text` as a file or folder name: anything but word characters, `.` and `-` (a glob's `*`, a `/`)
    becomes `_`; `default` when nothing is left."""
    return re.sub(r"[^\w.-]", "_", text) or default
