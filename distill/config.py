"""Dataclass configs of the distill stage: which LLM, how to label, how to tune. Defaults live here once."""

from __future__ import annotations

from dataclasses import dataclass, field

from distill.models import DEFAULT_MODEL
from fusionlog.config import register_config_type
from fusionlog.errors import ConfigError

BACKENDS = ("transformers", "vllm", "openai")


@register_config_type
@dataclass(frozen=True)
class BackendConfig:
    """Which LLM answers, and where. The same dataclass feeds the CLI and the run's summary."""

    backend: str = field(default="transformers",
                         metadata={"help": "transformers (CPU default), vllm (GPU), openai (HTTP)"})
    model: str = field(default=DEFAULT_MODEL,
                       metadata={"help": "alias, local .gguf file, model folder, or served model id"})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder from `fusionlog llm-tune`"})
    device: str = "cpu"
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "openai backend endpoint"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "env var holding the API key"})
    timeout_s: float = 60.0
    max_retries: int = 3
    concurrency: int = 4
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"BackendConfig.backend={self.backend!r}: must be one of {list(BACKENDS)}")
        if self.adapter and self.backend != "transformers":
            raise ConfigError("BackendConfig.adapter: LoRA adapters load with the transformers backend only "
                              "(serve a merged model for vllm/openai)")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.concurrency < 1:
            raise ConfigError("BackendConfig: timeout_s must be > 0, max_retries >= 0, concurrency >= 1")


@register_config_type
@dataclass(frozen=True)
class LabelConfig:
    """How the labeller chooses, asks and records. Budgets count distinct event sequences."""

    prompt: str = field(default="label_session", metadata={"help": "prompt name in prompts/ or a .yaml path"})
    max_calls: int | None = field(default=None, metadata={"help": "at most this many distinct sequences to label"})
    fraction: float | None = field(default=None, metadata={"help": "at most this fraction of the target's sessions"})
    k_examples: int = field(default=2, metadata={"help": "labelled source sessions shown per prompt (0 = none)"})
    max_session_tokens: int = field(default=500, metadata={"help": "budget for the session's template lines"})
    max_example_tokens: int = field(default=120, metadata={"help": "budget per few-shot example"})
    max_retries: int = field(default=2, metadata={"help": "re-asks after a malformed/failed answer, then abstain"})
    reason_tokens: int = field(default=0, metadata={"help": "tokens of generated reason (0 = label only, fastest)"})
    batch_size: int = 8
    order: str = field(default="frequency", metadata={"help": "without small-model scores: frequency or seeded"})
    seed: int = 0
    threshold: float = field(default=0.5, metadata={"help": "label = prob >= threshold"})

    def __post_init__(self) -> None:
        if self.max_calls is not None and self.max_calls < 0:
            raise ConfigError(f"LabelConfig.max_calls={self.max_calls}: must be >= 0")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"LabelConfig.fraction={self.fraction}: must be in (0, 1]")
        if self.k_examples < 0 or self.max_retries < 0 or self.reason_tokens < 0 or self.batch_size < 1:
            raise ConfigError("LabelConfig: k_examples, max_retries, reason_tokens must be >= 0; batch_size >= 1")
        if self.max_session_tokens < 16 or self.max_example_tokens < 16:
            raise ConfigError("LabelConfig: token budgets must be >= 16")
        if self.order not in ("frequency", "seeded"):
            raise ConfigError(f"LabelConfig.order={self.order!r}: must be 'frequency' or 'seeded'")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"LabelConfig.threshold={self.threshold}: must be in (0, 1)")


@register_config_type
@dataclass(frozen=True)
class TuneConfig:
    """LoRA on the LLM side, from labelled SOURCE sessions only; sized to train on 2 CPU cores in minutes."""

    rank: int = field(default=4, metadata={"help": "LoRA rank"})
    alpha: int = 8
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    train_per_class: int = field(default=48, metadata={"help": "distinct source sequences per label for training"})
    calib_per_class: int = field(default=16, metadata={"help": "held-out source sequences per label for calibration"})
    epochs: int = 1
    lr: float = 3e-4
    grad_accum: int = 4
    max_session_tokens: int = field(default=160, metadata={"help": "short prompts keep CPU training in minutes"})
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha < 1:
            raise ConfigError(f"TuneConfig.rank={self.rank}, alpha={self.alpha}: must be >= 1")
        if self.train_per_class < 1 or self.calib_per_class < 1 or self.epochs < 1 or self.grad_accum < 1:
            raise ConfigError("TuneConfig: train_per_class, calib_per_class, epochs, grad_accum must be >= 1")
        if not 0.0 < self.lr < 1.0:
            raise ConfigError(f"TuneConfig.lr={self.lr}: must be in (0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"TuneConfig.dropout={self.dropout}: must be in [0, 1)")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))


@register_config_type
@dataclass(frozen=True)
class RoundLoraConfig:
    """LoRA on the LLM between distillation rounds (`--llm-lora`), from labels both models agree on.

    Why agreement: neither model is trustworthy alone on a new system; a session the small model is
    confident about *and* the LLM labels the same way is the cheapest label we can trust without
    ground truth. The adapter is retrained from the base (or `--llm-adapter`) each round on every
    agreement so far, so one round's mistake does not compound. Sized for a GPU; tests shrink it.
    """

    rank: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    epochs: int = field(default=2, metadata={"help": "passes over the round's examples"})
    max_steps: int | None = field(default=None, metadata={"help": "cap on optimizer steps per round (None = none)"})
    lr: float = 2e-4
    grad_accum: int = 4
    confident: float = field(default=0.8, metadata={"help": "small-model P (or 1-P) counted as confident"})
    min_agreed: int = field(default=8, metadata={"help": "train only with at least this many agreed sequences"})
    max_agreed: int = field(default=256, metadata={"help": "most confident agreed sequences used per round"})
    balance_with_sources: bool = field(
        default=True, metadata={"help": "top up the rarer class with labelled source sessions"})
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha < 1 or self.epochs < 1 or self.grad_accum < 1:
            raise ConfigError("RoundLoraConfig: rank, alpha, epochs and grad_accum must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"RoundLoraConfig.max_steps={self.max_steps}: must be >= 1 or None")
        if not 0.5 <= self.confident < 1.0:
            raise ConfigError(f"RoundLoraConfig.confident={self.confident}: must be in [0.5, 1)")
        if self.min_agreed < 1 or self.max_agreed < self.min_agreed:
            raise ConfigError("RoundLoraConfig: need 1 <= min_agreed <= max_agreed")
        if not 0.0 < self.lr < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("RoundLoraConfig: lr must be in (0, 1), dropout in [0, 1)")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
