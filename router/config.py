"""Router and index settings: frozen dataclasses, defined once for the Python API, the CLI and router.json.

Kept in a module of its own, free of numpy and faiss, so `fusionlog route --help` can build its flags
from these fields without importing anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionlog.config import config_from_dict, register_config_type
from fusionlog.errors import ConfigError

GPU_MODES = ("auto", "never", "always")


@register_config_type
@dataclass(frozen=True)
class IndexConfig:
    """How a FAISS index is built: exact inner product while it is affordable, IVF beyond.

    Inner product equals cosine because every vector we index is L2-normalised. Exact search is the
    default up to `flat_max` vectors (1e6 x 384-d is 1.5 GB and a few ms per query on a few cores);
    beyond that an inverted-file index trades a little recall for a query cost that no longer grows with n.
    """

    flat_max: int = field(default=1_000_000, metadata={"help": "exact (flat) search up to this many vectors"})
    nlist: int = field(default=0, metadata={"help": "IVF cells; 0 = about 4*sqrt(n), at most train_max/39"})
    nprobe: int = field(default=32, metadata={"help": "IVF cells visited per query (recall vs speed)"})
    train_max: int = field(default=100_000, metadata={"help": "max vectors sampled to train the IVF quantizer"})
    use_gpu: str = field(default="auto", metadata={"help": "'auto' (GPU when faiss has it and CUDA is up), "
                                                           "'never' or 'always'"})
    seed: int = field(default=0, metadata={"help": "seed of the IVF training sample and k-means"})

    def __post_init__(self) -> None:
        if self.flat_max < 1:
            raise ConfigError(f"IndexConfig.flat_max={self.flat_max}: must be >= 1")
        if self.nlist < 0:
            raise ConfigError(f"IndexConfig.nlist={self.nlist}: must be >= 0 (0 = automatic)")
        if self.nprobe < 1:
            raise ConfigError(f"IndexConfig.nprobe={self.nprobe}: must be >= 1")
        if self.train_max < 1:
            raise ConfigError(f"IndexConfig.train_max={self.train_max}: must be >= 1")
        if self.use_gpu not in GPU_MODES:
            raise ConfigError(f"IndexConfig.use_gpu={self.use_gpu!r}: must be one of {GPU_MODES}")


@register_config_type
@dataclass(frozen=True)
class RouterConfig:
    """Thresholds of the semantic router. `None` thresholds are calibrated from the sources at `fit`.

    The calibration rule (see `router.router.calibrate`): for each source system in turn, the nearest
    similarity of each of its templates (and deduplicated sessions) to the *other* source systems is
    measured; tau = the `quantile` of those leave-one-system-out similarities, every system weighted
    equally, clipped to [tau_min, tau_max]. No anomaly label is read.
    """

    tau_template: float | None = field(
        default=None, metadata={"help": "cosine at which a target template counts as known (None = calibrate)"})
    tau_session: float | None = field(
        default=None, metadata={"help": "cosine to the nearest source session that counts as close "
                                        "(None = calibrate)"})
    tau_coverage: float = field(
        default=0.5, metadata={"help": "share of a session's distinct templates that must be known for 'general'"})
    require_session: bool = field(
        default=False, metadata={"help": "also require nearest-session similarity >= tau_session for 'general'"})
    quantile: float = field(
        default=0.95, metadata={"help": "quantile of leave-one-system-out similarities used as tau"})
    tau_min: float = field(default=0.3, metadata={"help": "lower clip of a calibrated tau"})
    tau_max: float = field(default=0.99, metadata={"help": "upper clip of a calibrated tau"})
    fallback_tau_template: float = field(
        default=0.6, metadata={"help": "tau_template when fewer than 2 source systems make calibration impossible"})
    fallback_tau_session: float = field(
        default=0.6, metadata={"help": "tau_session when fewer than 2 source systems make calibration impossible"})
    calibration_max: int = field(
        default=20_000, metadata={"help": "max vectors per source system used for calibration (seeded sample)"})
    seed: int = field(default=0, metadata={"help": "seed of calibration subsampling"})
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        for name in ("tau_template", "tau_session"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise ConfigError(f"RouterConfig.{name}={value}: a cosine must be in [-1, 1] (or None = calibrate)")
        if not 0.0 <= self.tau_coverage <= 1.0:
            raise ConfigError(f"RouterConfig.tau_coverage={self.tau_coverage}: must be in [0, 1]")
        if not 0.0 < self.quantile < 1.0:
            raise ConfigError(f"RouterConfig.quantile={self.quantile}: must be in (0, 1)")
        if not -1.0 <= self.tau_min <= self.tau_max <= 1.0:
            raise ConfigError(f"RouterConfig.tau_min={self.tau_min}, tau_max={self.tau_max}: "
                              f"need -1 <= tau_min <= tau_max <= 1")
        for name in ("fallback_tau_template", "fallback_tau_session"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"RouterConfig.{name}={getattr(self, name)}: must be in [-1, 1]")
        if self.calibration_max < 10:
            raise ConfigError(f"RouterConfig.calibration_max={self.calibration_max}: must be >= 10")
        if isinstance(self.index, dict):  # built from JSON by hand
            object.__setattr__(self, "index", config_from_dict(IndexConfig, self.index))
