"""Where the data lives: --data-dir, then $FUSIONLOG_DATA, then ./data, then ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

from fusionlog.errors import DataError

ENV_VAR = "FUSIONLOG_DATA"


def candidate_data_dirs(explicit: str | Path | None = None) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    if explicit:
        out.append(("--data-dir", Path(explicit)))
    if os.environ.get(ENV_VAR):
        out.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR])))
    out.append(("./data", Path.cwd() / "data"))
    out.append(("../shared/data", Path.cwd().parent / "shared" / "data"))
    repo_shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    out.append(("<repo>/../shared/data", repo_shared))
    return out


def resolve_data_dir(explicit: str | Path | None = None) -> Path:
    """First existing candidate; an explicit --data-dir that does not exist is an error, not a fallback."""
    cands = candidate_data_dirs(explicit)
    if explicit and not Path(explicit).is_dir():
        raise DataError(f"--data-dir {explicit}: not a directory")
    for _why, path in cands:
        if path.is_dir():
            return path
    tried = ", ".join(f"{why} ({p})" for why, p in cands)
    raise DataError(f"no data directory found; tried {tried}. Pass --data-dir or set ${ENV_VAR}.")
