"""What every benchmark module does with its figures, and how it runs on its own (`python -m eval.bench_X`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def report_figures(figures: dict, json_path: str | None, width: int = 22, hide: tuple[str, ...] = ()) -> None:
    """Print one `name value` line per figure (except `hide`) and, if asked, write them all as JSON."""
    for k, v in figures.items():
        if k not in hide:
            print(f"{k:{width}s} {v}")
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def standalone(doc: str | None, add_args: Callable[[argparse.ArgumentParser], None],
               main: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """A benchmark module's own command line: its docstring's first line as description, its flags, its main."""
    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    add_args(ap)
    return main(ap.parse_args(argv))
