"""LLM text → a verdict {label, prob, confidence, reason}, or a counted abstention.

Why a separate, total parser: generated text is untrusted and often malformed (small models ramble,
servers truncate). `parse_answer` never raises; it returns None for anything it cannot read with
confidence, and the labeller retries, then abstains. Two answer shapes are accepted: a JSON object
with a "label" field, or a first line that starts with the label word.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from distill.backends.base import LABEL_WORDS

_WORD = re.compile(r"[a-z]+")
_JSON_OBJ = re.compile(r"\{[^{}]*\}", re.S)
_SYNONYMS = {"normal": 0, "benign": 0, "anomalous": 1, "anomaly": 1, "abnormal": 1}
MAX_REASON_CHARS = 240


@dataclass(frozen=True)
class ParsedAnswer:
    label: int
    reason: str
    prob: float | None = None  # a probability stated in the text (JSON), if any


@dataclass
class Verdict:
    """The labeller's output for one session (every member of a deduplicated group gets a copy)."""

    key: str
    sequence_id: str  # hash of the event sequence: equal ids share one LLM call
    label: int | None  # None when abstained
    prob: float | None  # P(anomalous), calibrated when a calibration is loaded
    confidence: float  # max(prob, 1 - prob); 0 when abstained
    reason: str = ""
    abstained: bool = False
    cached: bool = False
    attempts: int = 0
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def label_of_word(word: str) -> int | None:
    return _SYNONYMS.get(word.strip().lower())


def parse_answer(text: str) -> ParsedAnswer | None:
    """Read a label (and reason) from generated text; None when the text does not say clearly."""
    if not isinstance(text, str) or not text.strip():
        return None
    parsed = _parse_json(text)
    if parsed is not None:
        return parsed
    return _parse_first_line(text)


def _parse_json(text: str) -> ParsedAnswer | None:
    for match in _JSON_OBJ.finditer(text):
        try:
            obj = json.loads(match.group(0))
        except ValueError:
            continue
        if not isinstance(obj, dict) or "label" not in obj:
            continue
        raw = obj["label"]
        if isinstance(raw, bool):
            label = int(raw)
        elif isinstance(raw, int) and raw in (0, 1):
            label = raw
        elif isinstance(raw, str):
            found = label_of_word(raw)
            if found is None:
                return None
            label = found
        else:
            return None
        prob = obj.get("probability", obj.get("confidence"))
        prob = float(prob) if isinstance(prob, (int, float)) and 0.0 <= float(prob) <= 1.0 else None
        if prob is not None and "confidence" in obj and "probability" not in obj:
            prob = prob if label == 1 else 1.0 - prob  # a confidence is in the stated label
        return ParsedAnswer(label, _clip(str(obj.get("reason", ""))), prob)
    return None


def _parse_first_line(text: str) -> ParsedAnswer | None:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    first = re.sub(r"^(label|answer|verdict)\s*[:=-]\s*", "", lines[0].strip(" *#>`\"'"), flags=re.I)
    match = _WORD.search(first.lower())
    if match is None:
        return None
    label = label_of_word(match.group(0))
    if label is None:
        return None
    # the rest of the first line after the word, plus the next line, is the reason
    rest = first[match.end():].strip(" .:,-—*\"'")
    reason = " ".join(x for x in [rest] + [ln.strip() for ln in lines[1:2]] if x).strip()
    return ParsedAnswer(label, _clip(reason))


def _clip(reason: str) -> str:
    reason = " ".join(reason.split())
    return reason[:MAX_REASON_CHARS]


def answer_format_hint() -> str:
    """The answer shape the prompts ask for (kept here so parser and prompts never drift)."""
    return f"{LABEL_WORDS[1]} or {LABEL_WORDS[0]}"
