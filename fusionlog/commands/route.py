"""`fusionlog route`: split a target's sessions into general / proprietary against source systems."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any

from fusionlog.commands._common import add_data_args, rule_from_args, spec_from_args

NAME = "route"
HELP = "route a target's sessions to 'general' (known to the source systems) or 'proprietary' (new)"

logger = logging.getLogger(__name__)

#: One labelled dataset per system; the default sources are these minus the target's own system.
DEFAULT_SOURCES: dict[str, str] = {"hdfs": "hdfs", "openstack": "openstack", "hadoop": "hadoop", "bgl": "bgl"}


def add_args(p: argparse.ArgumentParser) -> None:
    from router.config import RouterConfig

    p.add_argument("--target", required=True, help="target dataset name, .jsonl session file, or raw log file")
    p.add_argument("--sources", nargs="+", metavar="DATASET",
                   help="labelled source datasets (default: one per other system among "
                        f"{', '.join(DEFAULT_SOURCES)}; never the target's system)")
    p.add_argument("--session", metavar="KEY", help="explain the decision for this target session")
    p.add_argument("--top", type=int, default=10, help="how many unmatched target templates to list (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--save", metavar="DIR", help="write the fitted router (faiss indexes + router.json) to DIR")
    p.add_argument("--router-config", metavar="FILE", help="RouterConfig as JSON; flags below override it")
    p.add_argument("--cache-dir", help="prepared-data folder (default: $FUSIONLOG_CACHE/prepared)")
    _add_config_args(p, RouterConfig)
    add_data_args(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fusionlog.data import system_of
    from fusionlog.embedding import Embedder
    from fusionlog.errors import ConfigError
    from fusionlog.prepare import prepare
    from router.router import SemanticRouter

    if args.top < 0:
        raise ConfigError(f"--top={args.top}: must be >= 0")
    config = _config_from_args(args)
    root = Path(args.cache_dir) if args.cache_dir else None
    embedder = Embedder()  # one model for every dataset; loaded only if a cache misses
    progress = not args.quiet
    target = prepare(args.target, args.data_dir, rule=rule_from_args(args), spec=spec_from_args(args.target, args),
                     embedder=embedder, root=root, progress=progress)
    target_system = target.dataset.system
    sources = args.sources or [ds for sys_, ds in DEFAULT_SOURCES.items() if sys_ != target_system]
    for name in sources:
        if system_of(name) == target_system:
            logger.warning("source %s is the target's own system (%s): the split is no longer cross-system",
                           name, target_system)
    prepared = [prepare(s, args.data_dir, embedder=embedder, root=root, progress=progress) for s in sources]
    router = SemanticRouter(config).fit(prepared)
    result = router.split(target.dataset, target.vectors)
    if args.save:
        router.save(args.save)
    explanation = result.explain(args.session) if args.session else None
    unmatched = result.unmatched_templates(args.top)
    if args.json:
        doc = result.summary()
        doc["sources"] = [{"name": p.dataset.name, "system": p.dataset.system, "templates": len(p.dataset.templates),
                           "sessions": len(p.dataset.sessions)} for p in prepared]
        doc["top_unmatched"] = [m.to_dict() for m in unmatched]
        if explanation is not None:
            doc["session"] = explanation.to_dict()
        print(json.dumps(doc, indent=2))
    else:
        print(_render(result, prepared, unmatched, explanation))
    return 0


# -- config flags, generated from RouterConfig so each default lives in one place -------------------


def _add_config_args(p: argparse.ArgumentParser, cls: type) -> None:
    g = p.add_argument_group("router settings (defaults: RouterConfig)")
    for f in dataclasses.fields(cls):
        if f.name == "index":
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{f.metadata.get('help', '')} (default {f.default})"
        kind = str(f.type)
        if kind == "bool":
            g.add_argument(flag, dest=f"rc_{f.name}", action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            typ = float if "float" in kind else int if "int" in kind else str
            metavar = {float: "X", int: "N"}.get(typ, "S")
            g.add_argument(flag, dest=f"rc_{f.name}", type=typ, default=None, metavar=metavar,
                           help=help_)
    g.add_argument("--use-gpu", dest="rc_use_gpu", choices=("auto", "never", "always"), default=None,
                   help="FAISS on GPU: auto (when faiss has GPU support and CUDA is up), never, always")


def _config_from_args(args: argparse.Namespace):
    from pathlib import Path

    from fusionlog.config import config_from_dict
    from fusionlog.errors import ConfigError
    from router.config import RouterConfig

    data: dict[str, Any] = {}
    if args.router_config:
        try:
            data = json.loads(Path(args.router_config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--router-config {args.router_config}: cannot read JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"--router-config {args.router_config}: expected a JSON object")
    for f in dataclasses.fields(RouterConfig):
        value = getattr(args, f"rc_{f.name}", None)
        if value is not None:
            data[f.name] = value
    if args.rc_use_gpu is not None:
        index = dict(data.get("index") or {})
        index["use_gpu"] = args.rc_use_gpu
        data["index"] = index
    return config_from_dict(RouterConfig, data)


# -- text output -------------------------------------------------------------------------------------


def _render(result, prepared, unmatched, explanation) -> str:
    s = result.summary()
    th = result.thresholds
    n = max(s["sessions"], 1)
    lines = [
        f"target {s['target']} (system {s['system']}): {s['sessions']} sessions, "
        f"{s['distinct_sequences']} distinct sequences",
        f"  general      {s['general']:>8}  ({100 * s['general'] / n:5.1f}%)",
        f"  proprietary  {s['proprietary']:>8}  ({100 * s['proprietary'] / n:5.1f}%)",
        "sources: " + ", ".join(f"{p.dataset.name} ({p.dataset.system}, {len(p.dataset.templates)} templates)"
                                for p in prepared),
        f"thresholds: tau_template={th.tau_template:.4f} ({th.template_method}), "
        f"tau_session={th.tau_session:.4f} ({th.session_method}), tau_coverage={th.tau_coverage:g}"
        + (", session similarity required" if th.require_session else ""),
        f"templates: {s['templates_matched']} of {s['templates_used']} used target templates known to the sources"
        + (f" ({s['templates_placeholder_only']} placeholder-only, ignored)"
           if s["templates_placeholder_only"] else ""),
    ]
    if unmatched:
        lines.append(f"top {len(unmatched)} unmatched target templates (by sessions affected):")
        lines.append(f"  {'sessions':>8}  {'cosine':>6}  target template  ->  nearest source template")
        for m in unmatched:
            near = f"[{m.nearest.source}] {_short(m.nearest.text)}" if m.nearest else "(none)"
            lines.append(f"  {m.sessions:>8}  {m.similarity:6.3f}  {_short(m.text)}  ->  {near}")
    if explanation is not None:
        lines.append(_render_session(explanation, th.tau_template))
    return "\n".join(lines)


def _render_session(e, tau_template: float) -> str:
    near = "(none)"
    if e.nearest is not None:
        lab = {None: "unlabelled", 0: "normal", 1: "anomalous"}[e.nearest.label]
        near = f"{e.nearest.source}:{e.nearest.key} ({lab}, {e.nearest.count} session(s) with this sequence)"
    lines = [
        f"session {e.key}: {e.route}",
        f"  coverage {e.coverage:.3f} ({e.matched} of {e.templates} distinct templates have a source template "
        f"with cosine >= {tau_template:.4f})",
        f"  nearest source session {near}, cosine {e.similarity:.4f}",
    ]
    if e.unmatched:
        lines.append("  unmatched templates:")
        for m in e.unmatched:
            src = f"[{m.nearest.source}] {_short(m.nearest.text)}" if m.nearest else "(none)"
            lines.append(f"    {m.similarity:6.3f}  {_short(m.text)}  ->  {src}")
    return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
