"""FusionLog's training-free semantic router: FAISS over source template/session vectors.

`SemanticRouter(config).fit(sources).split(target, vectors) -> RouteResult` sends each target session
to "general" (the sources know it: small model) or "proprietary" (new: LLM). The heavy modules (numpy,
faiss) load on first use of those names, so importing `router.config` for CLI flags stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from router.config import IndexConfig, RouterConfig

if TYPE_CHECKING:
    from router.index import VectorIndex
    from router.router import Neighbour, RouteResult, SemanticRouter, SessionRoute, TemplateMatch, Thresholds

__all__ = [
    "IndexConfig",
    "Neighbour",
    "RouteResult",
    "RouterConfig",
    "SemanticRouter",
    "SessionRoute",
    "TemplateMatch",
    "Thresholds",
    "VectorIndex",
]

_LAZY = {
    "VectorIndex": "router.index",
    "Neighbour": "router.router",
    "RouteResult": "router.router",
    "SemanticRouter": "router.router",
    "SessionRoute": "router.router",
    "TemplateMatch": "router.router",
    "Thresholds": "router.router",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'router' has no attribute {name!r}")
