"""Drain3 template mining with plain-JSON state.

`TemplateStore` has two modes, like Drain3 itself: `fit_line` (training: may create or widen templates)
and `match_line` (inference: never changes anything; an unseen line gets UNKNOWN_EVENT). State is saved
as JSON we build ourselves (config, clusters and the prefix tree), because Drain3's own snapshots are
jsonpickle, which executes code on load just as pickle does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from drain3 import TemplateMiner
from drain3.drain import LogCluster, Node
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig

from fusionlog.config import ParseConfig, config_from_dict, config_to_dict
from fusionlog.constants import FORMAT_VERSION, UNKNOWN_EVENT
from fusionlog.errors import ArtifactError
from fusionlog.io import atomic_write_text

logger = logging.getLogger(__name__)

_UUID = (r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", "UUID")
_BLK = (r"blk_-?\d+", "BLK")
#: hardware addresses: six or more 2-hex-digit groups (MACs; BGL's 12-group chip ids). Unmasked, NUM took
#: the all-digit groups, leaving `<:NUM:>:<:NUM:>:<:NUM:>:e3:ba:c3`: a template per device
_MAC = (r"(?<![\w:-])(?:[0-9a-fA-F]{2}[:-]){5,}[0-9a-fA-F]{2}(?![\w-])", "MAC")
#: IPv6, full (8 groups) or compressed (`::`), named IP like IPv4 (the same kind of value in a template);
#: at least one digit, so a scope such as `Bad::Feed` stays text
_IP6 = (r"(?<![\w:])(?=[0-9a-fA-F:]*\d)(?:(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}"
        r"|(?:[0-9a-fA-F]{1,4}:){1,6}(?::[0-9a-fA-F]{1,4}){1,6}|(?:[0-9a-fA-F]{1,4}:){1,7}:"
        r"|::(?:[0-9a-fA-F]{1,4}:){0,6}[0-9a-fA-F]{1,4})(?![\w:])", "IP")
_REST = (
    (r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])", "IP"),
    (r"(?<![\w])0[xX][0-9a-fA-F]+(?![\w])", "HEX"),
    (r"(?<![\w])[0-9a-fA-F]{16,}(?![\w])", "HEX"),
    (r"(?<![\w:])(?:/[\w.\-]+){2,}/?", "PATH"),
    (r"(?<![\w])[-+]?\d+(?:\.\d+)?(?![\w])", "NUM"),
)
#: Masks applied before clustering, most specific first (a UUID contains hex and numbers), by
#: `ParseConfig.mask_set`; set 1 is what artifacts saved before MAC and IPv6 masking were parsed with.
MASK_SETS: dict[int, tuple[tuple[str, str], ...]] = {
    1: (_UUID, _BLK, *_REST),
    2: (_UUID, _BLK, _MAC, _IP6, *_REST),
}
DEFAULT_MASKS = MASK_SETS[2]


def default_masks(cfg: ParseConfig) -> tuple[tuple[str, str], ...]:
    """The default (pattern, name) masks a config parses with: none when masking is off."""
    return MASK_SETS[cfg.mask_set] if cfg.mask else ()


def saved_parse_config(data: dict[str, Any]) -> ParseConfig:
    """A ParseConfig read back from a saved Drain state; one saved before `mask_set` existed used set 1."""
    return config_from_dict(ParseConfig, {"mask_set": 1, **data})


PARAM = "<*>"


class TemplateStore:
    """One system's Drain3 miner plus the id -> template table that sessions index.

    Event id = Drain cluster id - 1, so ids are dense from 0 in order of first appearance.
    """

    def __init__(self, system: str, config: ParseConfig | None = None) -> None:
        self.system = system
        self.config = config or ParseConfig()
        self.miner = TemplateMiner(config=_miner_config(self.config))
        self._match_cache: dict[str, int] = {}
        self._fit_cache: dict[str, int] = {}

    # -- training mode -------------------------------------------------------------------------
    def fit_line(self, content: str) -> int:
        """Add one line (may create or generalise a template); returns its event id.

        An exact repeat of a line already added goes to the same cluster without re-running masking
        and tree search (its cluster only ever generalises, so it still matches); only the cluster's
        size is counted. Logs are mostly repeats, so this is most of the parsing time saved.
        """
        cid = self._fit_cache.get(content)
        if cid is not None:
            cluster = self.miner.drain.id_to_cluster.get(cid)
            if cluster is not None:
                cluster.size += 1
                return cid - 1
        self._match_cache.clear()
        result = self.miner.add_log_message(content)
        cid = int(result["cluster_id"])
        if len(self._fit_cache) < 1_000_000:
            self._fit_cache[content] = cid
        return cid - 1

    def fit(self, contents: Iterable[str]) -> list[int]:
        return [self.fit_line(c) for c in contents]

    # -- inference mode ------------------------------------------------------------------------
    def match_line(self, content: str) -> int:
        """Event id of the template that fully matches `content`, or UNKNOWN_EVENT. Never mutates.

        Results are cached by exact content: logs repeat the same lines a lot, and matching is the
        hot path at detection time.
        """
        hit = self._match_cache.get(content)
        if hit is not None:
            return hit
        cluster = self.miner.match(content, full_search_strategy="fallback")
        eid = UNKNOWN_EVENT if cluster is None else cluster.cluster_id - 1
        if len(self._match_cache) < 1_000_000:
            self._match_cache[content] = eid
        return eid

    def transform(self, contents: Iterable[str]) -> list[int]:
        return [self.match_line(c) for c in contents]

    # -- templates -----------------------------------------------------------------------------
    @property
    def templates(self) -> list[str]:
        """Template text per event id (index = id). Drain's `<*>` and masks like `<:NUM:>` kept."""
        clusters = {c.cluster_id: c for c in self.miner.drain.clusters}
        n = self.miner.drain.clusters_counter
        return [clusters[i + 1].get_template() if (i + 1) in clusters else "" for i in range(n)]

    def __len__(self) -> int:
        return self.miner.drain.clusters_counter

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        drain = self.miner.drain
        return {
            "format_version": FORMAT_VERSION,
            "system": self.system,
            "config": config_to_dict(self.config),
            "clusters_counter": drain.clusters_counter,
            "clusters": [
                {"id": c.cluster_id, "size": c.size, "tokens": list(c.log_template_tokens)}
                for c in sorted(drain.clusters, key=lambda c: c.cluster_id)
            ],
            "tree": _node_to_dict(drain.root_node),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemplateStore:
        try:
            if data.get("format_version") != FORMAT_VERSION:
                raise ArtifactError(
                    f"template store format_version={data.get('format_version')!r}, expected {FORMAT_VERSION}"
                )
            store = cls(data["system"], saved_parse_config(data["config"]))
            drain = store.miner.drain
            for c in data["clusters"]:
                cluster = LogCluster(c["tokens"], int(c["id"]))
                cluster.size = int(c["size"])
                drain.id_to_cluster[cluster.cluster_id] = cluster
            drain.clusters_counter = int(data["clusters_counter"])
            drain.root_node = _node_from_dict(data["tree"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"template store JSON is malformed: {exc!r}") from exc
        return store

    def save(self, path: Path | str) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: Path | str) -> TemplateStore:
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"{path}: template store file not found")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _miner_config(cfg: ParseConfig) -> TemplateMinerConfig:
    mc = TemplateMinerConfig()
    mc.drain_depth = cfg.depth
    mc.drain_sim_th = cfg.sim_th
    mc.drain_max_children = cfg.max_children
    mc.drain_max_clusters = cfg.max_clusters
    mc.profiling_enabled = False
    mc.mask_prefix = "<:"
    mc.mask_suffix = ":>"
    # a system's own masks first: they are the more specific (a host:port would otherwise lose its port to NUM)
    masks = [(m.pattern, m.name) for m in cfg.extra_masks]
    masks += list(default_masks(cfg))
    mc.masking_instructions = [MaskingInstruction(p, name) for p, name in masks]
    return mc


def _node_to_dict(node: Node) -> dict[str, Any]:
    return {
        "ids": list(node.cluster_ids),
        "children": {k: _node_to_dict(v) for k, v in node.key_to_child_node.items()},
    }


def _node_from_dict(data: dict[str, Any]) -> Node:
    node = Node()
    node.cluster_ids = [int(i) for i in data["ids"]]
    node.key_to_child_node = {k: _node_from_dict(v) for k, v in data["children"].items()}
    return node
