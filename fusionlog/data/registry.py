"""One registry of named datasets (session sets and raw-line sets), plus paths and user specs.

`load_dataset("openstack")`, `load_dataset("bgl")`, `load_dataset("my.jsonl")` and
`load_dataset("app.log", spec=RawSpec(...))` all return a `SessionDataset`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fusionlog.config import ParseConfig, SessionRule
from fusionlog.data.jsonl import is_jsonl_path, load_jsonl_sessions
from fusionlog.data.named_formats import LOGHUB_FORMATS, LOGHUB_MASKS
from fusionlog.data.paths import resolve_data_dir
from fusionlog.data.raw import RawFile, RawSpec, load_raw
from fusionlog.data.sequences import read_id_sequences, read_template_lines, read_text_sequences
from fusionlog.errors import DataError
from fusionlog.types import ReadStats, Session, SessionDataset

logger = logging.getLogger(__name__)

#: HDFS_v1's natural anomaly rate (16,838 anomalous of 575,061 blocks); `hdfs` is sampled down to it.
HDFS_ANOMALY_RATE = 16_838 / 575_061
HDFS_SAMPLE_SEED = 20_240_101

Loader = Callable[[Path, ParseConfig | None, SessionRule | None, bool], SessionDataset]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    system: str
    kind: str  # "sessions" (template sequences) or "raw" (raw lines)
    labelled: bool
    description: str
    loader: Loader
    spec: RawSpec | None = None  # for raw-line datasets: how their lines are read


_REGISTRY: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> None:
    _REGISTRY[info.name] = info


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; known: {', '.join(dataset_names())}, "
            f"or a path to a .jsonl session file, or a raw log with --log-format"
        ) from None


def system_of(name_or_path: str) -> str:
    info = _REGISTRY.get(name_or_path.lower())
    return info.system if info else Path(name_or_path).name.split(".")[0].lower()


def load_dataset(
    name_or_path: str,
    data_dir: str | Path | None = None,
    parse: ParseConfig | None = None,
    rule: SessionRule | None = None,
    spec: RawSpec | None = None,
    progress: bool = True,
) -> SessionDataset:
    """Load a named dataset, a JSONL session file, or a user's raw log (with `spec`)."""
    if spec is not None:
        if rule is not None:
            spec = replace(spec, rule=rule)
        return load_raw(name_or_path, spec, Path("."), parse, progress)
    if name_or_path.lower() in _REGISTRY:
        info = _REGISTRY[name_or_path.lower()]
        return info.loader(resolve_data_dir(data_dir), parse, rule, progress)
    if is_jsonl_path(name_or_path):
        return load_jsonl_sessions(Path(name_or_path), parse=parse)
    return dataset_info(name_or_path).loader(resolve_data_dir(data_dir), parse, rule, progress)  # raises


# -- session datasets (ait-aecid id sequences) ------------------------------------------------


def _id_sequence_loader(
    name: str, system: str, folder: str, templates: str, files: list[tuple[str, int]], description: str
) -> Loader:
    def load(data_dir: Path, parse, rule, progress) -> SessionDataset:
        base = data_dir / folder
        table = read_template_lines(base / templates)
        stats = ReadStats()
        sessions: list[Session] = []
        for fname, label in files:
            sessions += read_id_sequences(base / fname, system, label, table, stats)
        return SessionDataset(name, system, table, sessions, time_ordered=False, stats=stats, description=description)

    return load


def _load_hdfs(data_dir: Path, parse, rule, progress) -> SessionDataset:
    """All 5,583 normal AIT blocks plus anomalies sampled (fixed seed) to HDFS_v1's natural rate."""
    base = data_dir / "hdfs/ait_aecid_hdfs_loghub"
    table = read_template_lines(base / "HDFS_templates.csv")
    stats = ReadStats()
    normal = read_id_sequences(base / "hdfs_train", "hdfs", 0, table, stats)
    abnormal = read_id_sequences(base / "hdfs_test_abnormal", "hdfs", 1, table, stats)
    n_anom = round(len(normal) * HDFS_ANOMALY_RATE / (1 - HDFS_ANOMALY_RATE))
    picked = random.Random(HDFS_SAMPLE_SEED).sample(abnormal, n_anom)
    return SessionDataset(
        "hdfs", "hdfs", table, normal + picked, time_ordered=False, stats=stats,
        description=(
            f"HDFS_v1 full block sequences (ait-aecid): {len(normal)} normal + {n_anom} anomalous sampled "
            f"with seed {HDFS_SAMPLE_SEED} from {len(abnormal)} to the natural rate {HDFS_ANOMALY_RATE:.2%}"
        ),
    )


def _load_hdfs_100k(data_dir: Path, parse, rule, progress) -> SessionDataset:
    stats = ReadStats()
    table, sessions = read_text_sequences(data_dir / "hdfs/HDFS_100k_sessions.jsonl.gz", "hdfs", "block_id", stats)
    return SessionDataset(
        "hdfs-100k", "hdfs", table, sessions, time_ordered=False, stats=stats,
        description="HDFS_v1 blocks of the first 100k lines (deep-loglizer); blocks sorted by id, no times",
    )


# -- raw-line datasets -----------------------------------------------------------------------

BLOCK_KEY = r"(blk_-?\d+)"
INSTANCE_KEY = r"\[instance: ([0-9a-fA-F-]{36})\]"


def _raw_loader(name: str, spec: RawSpec) -> Loader:
    def load(data_dir: Path, parse, rule, progress) -> SessionDataset:
        s = replace(spec, rule=rule) if rule is not None else spec
        return load_raw(name, s, data_dir, parse, progress)

    return load


def _loghub_spec(system: str, **kw) -> RawSpec:
    return RawSpec(
        system=system.lower(),
        files=(RawFile(f"loghub2k/{system}/{system}_2k.log"),),
        log_format=LOGHUB_FORMATS[system],
        **kw,
    )


def _register_all() -> None:
    ait = "ait-aecid (Landauer et al. 2024) event-id sequences"
    register(DatasetInfo("hdfs", "hdfs", "sessions", True, "HDFS_v1 full blocks, natural anomaly rate", _load_hdfs))
    register(DatasetInfo("hdfs-100k", "hdfs", "sessions", True, "HDFS_v1 first-100k-lines blocks", _load_hdfs_100k))
    register(DatasetInfo(
        "openstack", "openstack", "sessions", True, "OpenStack Kalaki fault-injection instances",
        _id_sequence_loader(
            "openstack", "openstack", "openstack/ait_aecid_openstack_parisakalaki", "OpenStack_templates.csv",
            [("openstack_test_normal", 0), ("openstack_test_abnormal", 1)],
            f"OpenStack nova (Kalaki et al. 2023) instances, {ait}; grouped by label, no times",
        ),
    ))
    register(DatasetInfo(
        "openstack-deeplog", "openstack", "sessions", True,
        "OpenStack DeepLog instances (labels not learnable from sequences)",
        _id_sequence_loader(
            "openstack-deeplog", "openstack", "openstack/ait_aecid_openstack_loghub", "OpenStack_templates.csv",
            [("openstack_test_normal", 0), ("openstack_test_abnormal", 1)],
            f"OpenStack DeepLog instances, {ait}; ait labelling (every instance of the abnormal file)",
        ),
    ))
    register(DatasetInfo(
        "hadoop", "hadoop", "sessions", True, "Hadoop applications (anomalies are the majority)",
        _id_sequence_loader(
            "hadoop", "hadoop", "hadoop/ait_aecid_hadoop_loghub", "Hadoop_templates.csv",
            [("hadoop_test_normal", 0), ("hadoop_test_abnormal", 1)],
            f"Hadoop application containers, {ait}; anomalies are the majority",
        ),
    ))
    register(DatasetInfo(
        "bgl-normal", "bgl", "sessions", True, "BGL normal node sequences (normal only)",
        _id_sequence_loader("bgl-normal", "bgl", "bgl/ait_aecid_bgl_loghub", "BGL_templates.csv",
                            [("bgl_train", 0)], f"BGL normal node sequences, {ait}"),
    ))
    register(DatasetInfo(
        "thunderbird-normal", "thunderbird", "sessions", True, "Thunderbird normal node sequences (normal only)",
        _id_sequence_loader("thunderbird-normal", "thunderbird", "thunderbird/ait_aecid_thunderbird_cfdr",
                            "Thunderbird_templates.csv", [("thunderbird_train", 0)],
                            f"Thunderbird normal node sequences, {ait}"),
    ))
    # raw lines
    bgl = _loghub_spec("BGL", rule=SessionRule("lines", window=20), label_mode="inline",
                       description="BGL_2k raw lines (inline labels) in 20-line windows: tiny")
    register(DatasetInfo("bgl", "bgl", "raw", True, "BGL 2k raw lines, 20-line windows (tiny)",
                         _raw_loader("bgl", bgl), bgl))
    tb = _loghub_spec("Thunderbird", rule=SessionRule("lines", window=20), label_mode="inline",
                      description="Thunderbird_2k raw lines in 20-line windows; no anomalies in the sample")
    register(DatasetInfo("thunderbird", "thunderbird", "raw", True,
                         "Thunderbird 2k raw lines, 20-line windows (0 anomalies)", _raw_loader("thunderbird", tb), tb))
    hdfs2k = _loghub_spec("HDFS", rule=SessionRule("key", key_pattern=BLOCK_KEY), label_mode="key_file",
                          label_file="hdfs/HDFS_2k_block_labels.csv",
                          description="HDFS_2k raw lines by block id; blocks are incomplete (a line sample)")
    register(DatasetInfo("hdfs-2k", "hdfs", "raw", True, "HDFS 2k raw lines by block id",
                         _raw_loader("hdfs-2k", hdfs2k), hdfs2k))
    kalaki = RawSpec(
        system="openstack",
        files=(
            RawFile("openstack/kalaki_openstack_logs/openstack-nova-dhcpoff.log", 1),
            RawFile("openstack/kalaki_openstack_logs/openstack-vm-destroy-immediately-after-create.log", 1),
            RawFile("openstack/kalaki_openstack_logs/openstack-nova-sample.log", None),
        ),
        log_format=r"<Level> <Component> \[<ADDR>\] <Content>",
        rule=SessionRule("key", key_pattern=INSTANCE_KEY),
        label_mode="file",
        line_filter=r"^(TRACE|DEBUG|INFO|AUDIT|WARNING|ERROR|CRITICAL) \S",
        # Drain's prefix tree keys on the first tokens; a leading "[instance: <uuid>]" would make every
        # instance line share one branch and merge unrelated messages, so it is cut (the key stays known).
        strip=r"^\[instance: [0-9a-fA-F-]{36}\]\s*",
        description="Kalaki nova raw logs by instance; abnormal files labelled 1, the mixed sample unlabelled",
    )
    register(DatasetInfo("openstack-raw", "openstack", "raw", False, "Kalaki OpenStack nova raw logs by instance",
                         _raw_loader("openstack-raw", kalaki), kalaki))
    for system in LOGHUB_FORMATS:
        name = f"{system.lower()}-2k"
        if name in ("hdfs-2k",):
            continue
        rule = (
            SessionRule("key", key_pattern=INSTANCE_KEY) if system == "OpenStack" else SessionRule("lines", window=20)
        )
        label_mode = "inline" if system in ("BGL", "Thunderbird") else "none"
        spec = _loghub_spec(system, rule=rule, label_mode=label_mode, masks=LOGHUB_MASKS.get(system, ()),
                            description=f"loghub {system}_2k raw lines")
        register(DatasetInfo(name, system.lower(), "raw", label_mode != "none",
                             f"loghub {system} 2k raw lines", _raw_loader(name, spec), spec))


_register_all()

#: How raw lines of a *session* dataset's system look, so an artifact trained on template sequences can
#: still read raw logs at detection time: (log format, session rule).
RAW_FORMS: dict[str, tuple[str, SessionRule]] = {
    "openstack": (r"<Level> <Component> \[<ADDR>\] <Content>", SessionRule("key", key_pattern=INSTANCE_KEY)),
    "openstack-deeplog": (LOGHUB_FORMATS["OpenStack"], SessionRule("key", key_pattern=INSTANCE_KEY)),
    "hdfs": (LOGHUB_FORMATS["HDFS"], SessionRule("key", key_pattern=BLOCK_KEY)),
    "hdfs-100k": (LOGHUB_FORMATS["HDFS"], SessionRule("key", key_pattern=BLOCK_KEY)),
    "hadoop": (LOGHUB_FORMATS["Hadoop"], SessionRule("lines", window=20)),
}


def raw_form(name: str) -> tuple[str, SessionRule] | None:
    """(log format, session rule) of a named dataset's raw lines, or None when unknown."""
    info = _REGISTRY.get(name.lower())
    if info is not None and info.spec is not None:
        return info.spec.log_format, info.spec.rule
    return RAW_FORMS.get(name.lower())
