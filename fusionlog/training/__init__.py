"""Trainers of the session model: supervised, meta-learning (MetaLog) and domain-adversarial (ZeroLog).

`train_model` runs all three from one `TrainConfig`; `SystemData` is what it consumes. Names are
imported lazily so that reading `TrainConfig` (the CLI builds flags from it) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "fusionlog.training.config",
    "LabelLeakError": "fusionlog.training.data",
    "SystemData": "fusionlog.training.data",
    "assert_unlabelled": "fusionlog.training.data",
    "TrainResult": "fusionlog.training.loop",
    "ValidationScores": "fusionlog.training.loop",
    "train_model": "fusionlog.training.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fusionlog.training' has no attribute {name!r}")
