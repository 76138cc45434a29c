"""Frozen dataclass configs, one per stage. Defaults live here once; the CLI and artifacts read them.

`from_dict` rejects unknown keys so a typo in a config file is an error, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeVar

from fusionlog.errors import ConfigError

T = TypeVar("T")


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a (possibly nested) config dataclass, refusing keys it does not declare."""
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        ftype = names[key].type
        sub = _dataclass_type(ftype)
        if sub is not None and isinstance(value, dict):
            kwargs[key] = config_from_dict(sub, value)
        elif isinstance(value, list) and key in _TUPLE_FIELDS:
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


_TUPLE_FIELDS = {"extra_masks", "sources"}


def _dataclass_type(ftype: Any) -> type | None:
    if isinstance(ftype, str):
        return _CONFIG_TYPES.get(ftype)
    return ftype if dataclasses.is_dataclass(ftype) else None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config: used to invalidate caches when a setting changes."""
    blob = json.dumps(config_to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class MaskRule:
    """One Drain3 masking instruction: text matching `pattern` is replaced by `<:name:>` before clustering."""

    pattern: str
    name: str


@dataclass(frozen=True)
class ParseConfig:
    """Drain3 settings. Defaults follow the loghub benchmark: depth 4, similarity 0.4."""

    depth: int = field(default=4, metadata={"help": "Drain parse-tree depth (>= 3)"})
    sim_th: float = field(default=0.4, metadata={"help": "Drain similarity threshold in [0, 1]"})
    max_children: int = field(default=100, metadata={"help": "max children per tree node"})
    max_clusters: int | None = field(default=None, metadata={"help": "cap on templates (LRU), None = no cap"})
    mask: bool = field(default=True, metadata={"help": "mask ids, IPs (v4, v6), MACs, hex, numbers, paths, UUIDs"})
    extra_masks: tuple[MaskRule, ...] = ()
    # which list of default masks (fusionlog.parsing.MASK_SETS): a saved Drain state keeps the list it was
    # parsed with, so an artifact reads new lines as it was trained even after the defaults change
    mask_set: int = 2

    def __post_init__(self) -> None:
        if self.depth < 3:
            raise ConfigError(f"ParseConfig.depth={self.depth}: must be at least 3")
        if not 0.0 <= self.sim_th <= 1.0:
            raise ConfigError(f"ParseConfig.sim_th={self.sim_th}: must be in [0, 1]")
        if self.max_children < 1:
            raise ConfigError(f"ParseConfig.max_children={self.max_children}: must be >= 1")
        if self.mask_set not in (1, 2):
            raise ConfigError(f"ParseConfig.mask_set={self.mask_set}: must be 1 or 2")
        object.__setattr__(
            self,
            "extra_masks",
            tuple(m if isinstance(m, MaskRule) else MaskRule(**m) for m in self.extra_masks),
        )


@dataclass(frozen=True)
class EmbedConfig:
    """Template embedding: one sentence-transformer for every system (the shared space)."""

    model: str = field(
        default="all-MiniLM-L6-v2",
        metadata={"help": "'all-MiniLM-L6-v2' (embedded wheel) or a local sentence-transformers folder"},
    )
    batch_size: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"EmbedConfig.batch_size={self.batch_size}: must be >= 1")


@dataclass(frozen=True)
class SessionRule:
    """How raw lines become sessions: by a key regex, by fixed windows of lines, or by time windows."""

    kind: str = "lines"  # "key" | "lines" | "time"
    _: KW_ONLY
    key_pattern: str = ""  # for kind="key": a regex whose group 1 (or whole match) is the session key
    window: int = 20  # for kind="lines": lines per window
    seconds: float = 60.0  # for kind="time": window length

    def __post_init__(self) -> None:
        if self.kind not in ("key", "lines", "time"):
            raise ConfigError(f"SessionRule.kind={self.kind!r}: must be 'key', 'lines' or 'time'")
        if self.kind == "key" and not self.key_pattern:
            raise ConfigError("SessionRule.kind='key' needs key_pattern (a regex)")
        if self.window < 1:
            raise ConfigError(f"SessionRule.window={self.window}: must be >= 1")
        if self.seconds <= 0:
            raise ConfigError(f"SessionRule.seconds={self.seconds}: must be > 0")


_CONFIG_TYPES: dict[str, type] = {
    "MaskRule": MaskRule,
    "ParseConfig": ParseConfig,
    "EmbedConfig": EmbedConfig,
    "SessionRule": SessionRule,
}


def register_config_type(cls: type) -> type:
    """Let nested configs declared in other modules be rebuilt by `config_from_dict`."""
    _CONFIG_TYPES[cls.__name__] = cls
    return cls
