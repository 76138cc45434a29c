"""Prompt templates users edit (prompts/*.yaml), loaded through langchain-core, validated at start-up.

Why validate at load time: a typo in a template ("{sesion}") would otherwise surface as a KeyError in
the middle of a paid, hours-long labelling run, or worse, silently render an empty slot. Each file
declares its variables; the variables langchain infers from the messages must equal the declared
ones, every one must be known (VARIABLES), the required ones must be present, and only the
f-string format is accepted (jinja2 templates can execute code, so they are refused).
"""

from __future__ import annotations

import hashlib
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from distill.backends.base import Messages
from fusionlog.errors import ConfigError

#: Every variable a template may use, and what the labeller puts there (prompts/README.md repeats it).
VARIABLES: dict[str, str] = {
    "system": "name of the target system, e.g. 'openstack'",
    "session": "the session's distinct templates with counts, fenced as untrusted data, cut to a token budget",
    "n_events": "number of events (log lines) in the session",
    "n_distinct": "number of distinct templates in the session",
    "examples": "k nearest labelled source sessions (system, label, fenced templates), or a 'none' note",
    "small_model_view": "the small model's P(anomalous) for this session, in words (later rounds)",
}
REQUIRED: frozenset[str] = frozenset({"session"})
_ROLES = {"system": "system", "user": "human", "human": "human", "assistant": "ai", "ai": "ai"}
_TOP_KEYS = {"name", "description", "variables", "messages", "template_format"}
_ROLE_OUT = {"system": "system", "human": "user", "ai": "assistant"}

DEFAULT_PROMPT = "label_session"
RECHECK_PROMPT = "recheck_disagreement"


def default_prompts_dir() -> Path:
    """$FUSIONLOG_PROMPTS, else the repository's prompts/ folder next to the packages."""
    env = os.environ.get("FUSIONLOG_PROMPTS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "prompts"


@dataclass(frozen=True)
class PromptTemplate:
    """One validated template file. `sha256` of the file bytes is part of every cache key."""

    name: str
    path: Path
    variables: tuple[str, ...]
    sha256: str
    chat: object  # langchain_core.prompts.ChatPromptTemplate (typed loosely: imported lazily)

    def render(self, values: Mapping[str, object]) -> Messages:
        """Fill the slots. Values are inserted verbatim (never re-parsed as templates)."""
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise ConfigError(f"prompt {self.path}: no value for variable(s) {missing}")
        given = {v: values[v] for v in self.variables}
        messages = self.chat.format_messages(**given)  # type: ignore[attr-defined]
        return [{"role": _ROLE_OUT[m.type], "content": str(m.content)} for m in messages]


def resolve_prompt_path(name_or_path: str, prompts_dir: Path | None = None) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"prompt file {path} does not exist")
        return path
    folder = Path(prompts_dir) if prompts_dir is not None else default_prompts_dir()
    for suffix in (".yaml", ".yml"):
        candidate = folder / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in folder.glob("*.y*ml")) if folder.is_dir() else []
    raise ConfigError(f"prompt {name_or_path!r}: no {name_or_path}.yaml in {folder}; known: {known}")


def load_prompt(name_or_path: str = DEFAULT_PROMPT, prompts_dir: Path | None = None,
                required: frozenset[str] = REQUIRED) -> PromptTemplate:
    """Load and validate one template; every problem is a ConfigError naming the file."""
    path = resolve_prompt_path(name_or_path, prompts_dir)
    raw = path.read_bytes()
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"prompt {path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"prompt {path}: expected a mapping with 'variables' and 'messages'")
    unknown_keys = sorted(set(doc) - _TOP_KEYS)
    if unknown_keys:
        raise ConfigError(f"prompt {path}: unknown key(s) {unknown_keys}; allowed: {sorted(_TOP_KEYS)}")
    fmt = doc.get("template_format", "f-string")
    if fmt != "f-string":
        raise ConfigError(f"prompt {path}: template_format {fmt!r} refused; only 'f-string' is allowed")
    pairs = _message_pairs(path, doc.get("messages"))
    declared = _declared(path, doc.get("variables"))
    _check_fields(path, pairs)
    from langchain_core.prompts import ChatPromptTemplate

    try:
        chat = ChatPromptTemplate.from_messages(pairs, template_format="f-string")
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"prompt {path}: cannot parse messages: {exc}") from exc
    inferred = set(chat.input_variables)
    _check_variables(path, declared, inferred, required)
    return PromptTemplate(str(doc.get("name") or path.stem), path, tuple(sorted(inferred)),
                          hashlib.sha256(raw).hexdigest(), chat)


def _message_pairs(path: Path, messages: object) -> list[tuple[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ConfigError(f"prompt {path}: 'messages' must be a non-empty list of {{role, content}}")
    pairs = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            raise ConfigError(f"prompt {path}: message {i} must have exactly 'role' and 'content'")
        role = str(msg["role"]).lower()
        if role not in _ROLES:
            raise ConfigError(f"prompt {path}: message {i} role {msg['role']!r}; allowed: system, user, assistant")
        if not isinstance(msg["content"], str):
            raise ConfigError(f"prompt {path}: message {i} content must be text")
        pairs.append((_ROLES[role], msg["content"]))
    if not any(role == "human" for role, _ in pairs):
        raise ConfigError(f"prompt {path}: needs at least one user message")
    return pairs


def _declared(path: Path, variables: object) -> set[str]:
    if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables):
        raise ConfigError(f"prompt {path}: 'variables' must be a list of names, e.g. [system, session]")
    return set(variables)


def _check_fields(path: Path, pairs: list[tuple[str, str]]) -> None:
    """Only bare names: '{x.attr}' or '{x[0]}' would reach into objects, '{x!r}' changes the text."""
    for _, content in pairs:
        try:
            parsed = list(string.Formatter().parse(content))
        except ValueError as exc:
            raise ConfigError(f"prompt {path}: bad braces ({exc}); write literal braces as {{{{ }}}}") from exc
        for _, field, spec, conv in parsed:
            if field is None:
                continue
            if not field.isidentifier() or spec or conv:
                raise ConfigError(f"prompt {path}: slot {{{field}}} must be a bare variable name")


def _check_variables(path: Path, declared: set[str], inferred: set[str], required: frozenset[str]) -> None:
    unknown = sorted((declared | inferred) - set(VARIABLES))
    if unknown:
        raise ConfigError(f"prompt {path}: unknown variable(s) {unknown}; known: {sorted(VARIABLES)}")
    undeclared = sorted(inferred - declared)
    if undeclared:
        raise ConfigError(f"prompt {path}: variable(s) {undeclared} used in messages but not declared")
    unused = sorted(declared - inferred)
    if unused:
        raise ConfigError(f"prompt {path}: declared variable(s) {unused} never used in messages")
    missing = sorted(required - inferred)
    if missing:
        raise ConfigError(f"prompt {path}: missing required variable(s) {missing}")
