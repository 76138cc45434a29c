"""`fusionlog data download NAME`: fetch a loghub archive for users who have internet.

Offline (as on our CI) this fails at once with a clear message instead of hanging.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import urllib.error
import urllib.request
from pathlib import Path

from fusionlog.data.paths import resolve_data_dir
from fusionlog.errors import DataError

logger = logging.getLogger(__name__)

ZENODO = "https://zenodo.org/records/8196385/files/{name}.zip?download=1"
#: loghub's full archives on Zenodo (record 8196385); names as loghub publishes them.
LOGHUB_ARCHIVES = (
    "Android_v1", "Android_v2", "Apache", "BGL", "HDFS_v1", "HDFS_v2", "HDFS_v3_TraceBench", "HPC",
    "Hadoop", "HealthApp", "Linux", "Mac", "OpenSSH", "OpenStack", "Proxifier", "Spark", "SSH",
    "Thunderbird", "Windows", "Zookeeper",
)


def download(name: str, data_dir: str | Path | None = None, timeout: float = 10.0) -> Path:
    """Download `<name>.zip` into `<data_dir>/downloads/`, verify it is a zip, print its sha256."""
    match = {a.lower(): a for a in LOGHUB_ARCHIVES}.get(name.lower())
    if match is None:
        raise DataError(f"unknown loghub archive {name!r}; known: {', '.join(LOGHUB_ARCHIVES)}")
    try:
        base = resolve_data_dir(data_dir)
    except DataError:
        base = Path(data_dir or "data")
    dest = base / "downloads" / f"{match}.zip"
    url = ZENODO.format(name=match)
    try:
        socket.getaddrinfo("zenodo.org", 443)
    except OSError as exc:
        raise DataError(
            f"cannot download {match}: no network ({exc}); fetch {url} elsewhere and put it in {dest}"
        ) from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".zip.part")
    sha = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as fh:
            while chunk := resp.read(1 << 20):
                sha.update(chunk)
                fh.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {exc}") from exc
    with open(tmp, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            tmp.unlink(missing_ok=True)
            raise DataError(f"{url}: the download is not a zip archive")
    tmp.replace(dest)
    logger.info("downloaded %s (sha256 %s)", dest, sha.hexdigest())
    return dest
