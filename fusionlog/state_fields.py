"""The fields of a `--state` file, read with a check of each one's type and range (`fusionlog.follow_state`,
`fusionlog.folder_state`).

Why: a state file is JSON an operator can open and edit. Read without checks, a field of the wrong type or out of
range crashed the detect far from the read: a string `offset` with a TypeError where the file was compared, a list
for `parts` with an AttributeError, `offset: -5` with "error: Invalid argument" from a seek, naming nothing. Each
reader here raises `BadField`, which names the field by its place in the file (`mark.offset`, `cuts[2][1]`); the
state turns it into one error naming the state file too.
"""

from __future__ import annotations

import json
from typing import Any

_MISSING = object()


class BadField(ValueError):
    """A field of a state file that is missing, of the wrong type or out of range; `name` is its place in the file."""

    def __init__(self, name: str, value: Any, wanted: str) -> None:
        self.name = name
        shown = "missing" if value is _MISSING else f"{_shown(value)}"
        super().__init__(f"field {name} is {shown}, expected {wanted}")


def _shown(value: Any) -> str:
    """The value as the file has it, cut short: the message must stay one line."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 60 else text[:57] + "..."


def field_of(obj: dict, key: str, name: str, default: Any = _MISSING) -> Any:
    """`obj[key]`, or `default` when there is one (a field an older state lacks); BadField naming `name` if missing."""
    if key in obj:
        return obj[key]
    if default is _MISSING:
        raise BadField(name, _MISSING, "to be there")
    return default


def whole(value: Any, name: str, least: int = 0, most: int | None = None) -> int:
    """A whole number within [least, most]. A float (`1.5`) or a boolean is refused, not rounded: it was not
    written by a detect, so the file was edited, and a line or a byte offset taken from it would be a guess."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadField(name, value, "a whole number")
    if value < least or (most is not None and value > most):
        raise BadField(name, value, f"a whole number from {least}" + (f" to {most}" if most is not None else " up"))
    return value


def text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise BadField(name, value, "a string")
    return value


def listed(value: Any, name: str, size: int | None = None) -> list:
    """A JSON list (of `size` items when given: a row such as `[line, key, part]`)."""
    if not isinstance(value, list):
        raise BadField(name, value, "a list" if size is None else f"a list of {size}")
    if size is not None and len(value) != size:
        raise BadField(name, value, f"a list of {size}")
    return value


def keyed(value: Any, name: str) -> dict:
    """A JSON object."""
    if not isinstance(value, dict):
        raise BadField(name, value, "an object ({...})")
    return value
