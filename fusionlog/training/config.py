"""`TrainConfig`: every knob of the trainers, defined once (Python API, CLI and reports read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionlog.config import register_config_type
from fusionlog.errors import ConfigError

META_ORDERS = ("first", "second")
SYSTEM_WEIGHTINGS = ("sqrt", "equal")


@register_config_type
@dataclass(frozen=True)
class TrainConfig:
    """How the session model is trained on labelled sources (+ the target's unlabelled pool).

    `meta=False, adversarial_weight=0` is plain supervised training (the `source-only` method);
    the defaults are the general path: MetaLog's meta-learning across source systems plus ZeroLog's
    domain-adversarial alignment to the target pool.
    """

    epochs: int = field(default=8, metadata={"help": "max epochs (early stopping on held-out source data)"})
    steps_per_epoch: int = field(default=25, metadata={"help": "optimizer steps per epoch"})
    batch_size: int = field(default=32, metadata={"help": "sessions per system per step"})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate (the meta-learner's gamma)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=5.0, metadata={"help": "max gradient norm (0 = off)"})
    meta: bool = field(default=True, metadata={"help": "meta-learning across source systems (eq. 3)"})
    meta_order: str = field(default="first", metadata={"help": "'first' (FOMAML) or 'second' (through the inner step)"})
    inner_lr: float = field(default=0.05, metadata={"help": "inner-step size alpha of eq. 2"})
    meta_weight: float = field(default=1.0, metadata={"help": "weight beta of the meta-test loss in eq. 3"})
    adversarial_weight: float = field(
        default=0.1, metadata={"help": "max gradient-reversal strength (DANN ramp); 0 = no discriminator"}
    )
    discriminator_hidden: int = field(default=64, metadata={"help": "hidden units of the domain discriminator"})
    count_power: float = field(
        default=0.5, metadata={"help": "sample a distinct session with prob ~ count**p (1 = as in the data)"}
    )
    class_weighting: bool = field(default=True, metadata={"help": "weight each class to half of a system's loss"})
    system_weighting: str = field(
        default="sqrt", metadata={"help": "source weight in the loss: 'sqrt' (of its sessions) or 'equal'"}
    )
    val_fraction: float = field(
        default=0.2, metadata={"help": "held-out share of each source (early stop, threshold)"}
    )
    patience: int = field(
        default=3, metadata={"help": "epochs without a better source-validation loss before stopping"}
    )
    template_prior: bool = field(default=False, metadata={
        "help": "weigh the target's surprise by a template classifier trained on the sources' labelled templates "
                "(fusionlog.template_prior; off by default: no gain on the pseudo-targets)"})
    seed: int = 0
    threads: int = field(default=1, metadata={"help": "torch CPU threads (0 = torch default)"})
    device: str = field(default="cpu", metadata={"help": "'cpu', 'cuda' or 'cuda:N'"})

    def __post_init__(self) -> None:
        for name in ("epochs", "steps_per_epoch", "batch_size", "discriminator_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)}: must be >= 1")
        if self.system_weighting not in SYSTEM_WEIGHTINGS:
            raise ConfigError(
                f"TrainConfig.system_weighting={self.system_weighting!r}: must be one of {SYSTEM_WEIGHTINGS}"
            )
        if self.meta_order not in META_ORDERS:
            raise ConfigError(f"TrainConfig.meta_order={self.meta_order!r}: must be one of {META_ORDERS}")
        for name in ("lr", "inner_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)}: must be > 0")
        for name in ("weight_decay", "grad_clip", "meta_weight", "adversarial_weight", "count_power"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)}: must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"TrainConfig.val_fraction={self.val_fraction}: must be in [0, 1)")
        if self.patience < 0 or self.threads < 0:
            raise ConfigError("TrainConfig.patience and TrainConfig.threads must be >= 0")
