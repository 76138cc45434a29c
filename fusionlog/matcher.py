"""Raw log messages → event ids of a fixed template list, for artifacts trained on template sequences.

A session dataset such as ait-aecid's `openstack` ships templates, not a Drain3 state, e.g.
`[instance: <*>] Attempting claim: memory <*> MB, disk <*> GB, vcpus <*> CPU` or HDFS's
`<*>Receiving block<*>src:<*>dest:<*>`. `TemplateMatcher` compiles such a list into regular expressions
so a detector trained on it still reads raw lines:

* `<*>` may span several tokens or nothing (`.*?`): loghub-style templates say nothing of token counts.
  Drain3's `<:*:>` is exactly one token (no whitespace): Drain3 only clusters lines of equal token count, so a
  one-wildcard template must not swallow its two-wildcard sibling's lines. Drain masks (`<:NUM:>`,
  `<:IP:>`, ...) become the mask's own regex (or the literal mask text); whitespace runs match any
  whitespace. A line no template regex matches is tried again masked as Drain3 masks it (`match_known`).
* The most specific template wins: candidates are tried in order of literal characters (most first),
  so `[instance: <*>] Claim successful` beats `[instance: <*>]     <*>`.
* Speed: templates whose first token is literal are indexed by it; each first token gets one
  alternation of its templates (most specific first, compiled at load): one `fullmatch`. Then
  only the wildcard-led templates that outrank that match are tried, each after a substring test of
  its literal chunks. Exact repeats of a line hit a content cache before any regex.
* A line that matches nothing becomes a NEW template: a Drain3 `TemplateStore` kept for unmatched lines
  only mines it, and it gets id `len(known) + drain id`. New templates are counted; the caller embeds
  them on the fly (`take_new`). Their number is capped (`max_new_templates`) so memory stays bounded;
  past the cap an unmatched line that fits no existing new template gets `UNKNOWN_EVENT` (counted).

Not thread-safe: `event_id` mutates the cache and the Drain3 store. Serving code holds a lock around it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fusionlog.config import ParseConfig
from fusionlog.constants import UNKNOWN_EVENT
from fusionlog.errors import ConfigError
from fusionlog.parsing import TemplateStore, default_masks

logger = logging.getLogger(__name__)

_PIECE = re.compile(r"<\*>|<:\*:>|<:([A-Za-z_][A-Za-z0-9_]*):>|\s+")
_WILDCARDS = ("<*>", "<:*:>")  # loghub/ait-aecid style, and Drain3's with our mask prefix/suffix
DRAIN_WILDCARD = "<:*:>"

#: Lines longer than this are not run through the template regexes (lazy wildcards backtrack
#: polynomially on pathological input); they go to the new-template miner, like any unmatched line.
MAX_MATCH_CHARS = 10_000


#: Characters of new-template text learned at most (besides `max_new_templates`). Why: the count alone bounded
#: nothing in bytes: lines of 200,000 words, each a new template, grew a server by 16 MB apiece (10,000 of them:
#: ~160 GB). Ordinary templates are ~100 characters, so 10,000 of them use a 16th of it.
MAX_NEW_TEMPLATE_CHARS = 16_000_000

#: Template lists up to this size are compiled when the matcher is built; larger ones on first use.
EAGER_COMPILE_MAX = 5_000


@dataclass
class MatcherStats:
    """What the matcher did with the lines it saw: every line is a cache hit, matched, new or overflow."""

    lines: int = 0
    cache_hits: int = 0  # exact repeats of an earlier line (no regex run)
    matched: int = 0  # matched a known template by regex
    matched_masked: int = 0  # of those, matched only after masking as Drain3 does (see match_known)
    new_lines: int = 0  # matched no known template; mined into a new template
    overflow: int = 0  # matched nothing and the new-template cap was reached: UNKNOWN_EVENT
    new_templates: int = 0  # distinct new templates created

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Compiled:
    tid: int
    regex: str  # without anchors; fullmatch anchors it
    groups: int  # capturing groups inside (from mask regexes)
    literal_chars: int
    wildcards: int
    first_token: str | None  # the first whitespace token when it is all literal, else None
    literals: tuple[str, ...]  # the longest literal chunks: a line lacking one cannot match (prefilter)


class TemplateMatcher:
    """Match raw messages against a known template list; learn unmatched ones as new templates.

    `templates[i]` is event id i (the artifact's template table). Ids `>= n_known` are new templates
    found at detection time, in order of first appearance.
    """

    def __init__(
        self,
        templates: Sequence[str],
        parse: ParseConfig | None = None,
        *,
        max_new_templates: int = 10_000,
        cache_size: int = 200_000,
        system: str = "new",
    ) -> None:
        if max_new_templates < 0:
            raise ConfigError(f"TemplateMatcher.max_new_templates={max_new_templates}: must be >= 0")
        if cache_size < 0:
            raise ConfigError(f"TemplateMatcher.cache_size={cache_size}: must be >= 0")
        self.known: list[str] = [str(t) for t in templates]
        self.n_known = len(self.known)
        self.parse = parse or ParseConfig()
        self.max_new_templates = max_new_templates
        self.cache_size = cache_size
        self._new_chars = 0  # text of the new templates learned so far (MAX_NEW_TEMPLATE_CHARS)
        self._said_full = False
        self.stats = MatcherStats()
        self._mask_regex = _mask_regexes(self.parse)
        compiled = [self._compile_one(i, t) for i, t in enumerate(self.known)]
        # Most specific first; ties: fewer wildcards, then the lower (older) id.
        compiled.sort(key=lambda c: (-c.literal_chars, c.wildcards, c.tid))
        self._by_first: dict[str, list[_Compiled]] = {}
        self._wild: list[_Compiled] = []
        for c in compiled:
            if c.first_token is None:
                self._wild.append(c)
            else:
                self._by_first.setdefault(c.first_token, []).append(c)
        self._rank = {c.tid: r for r, c in enumerate(compiled)}
        self._combined: dict[str, tuple[re.Pattern[str], dict[int, int]]] = {}
        self._wild_compiled: dict[int, re.Pattern[str]] = {}
        if len(self.known) <= EAGER_COMPILE_MAX:
            # At load time, so the first lines (or the first request) do not pay for it.
            for first in self._by_first:
                self._pattern_for(first)
            for c in self._wild:
                self._wild_pattern(c)
        # Exact texts of known templates map to themselves (a client may send template text).
        self._exact = {t.strip(): i for i, t in reversed(list(enumerate(self.known)))}
        self._cache: dict[str, int] = {}
        self._new = TemplateStore(system, self.parse)
        # Drain3's own masker (same rules, same order) for lines the template regexes miss (match_known)
        self._masker = self._new.miner.masker if self.parse.mask or self.parse.extra_masks else None
        self._new_seen: dict[int, str] = {}  # new id -> template text the caller last took
        self._fits = 0  # lines mined into the new-template store (only these can change templates)
        self._fits_taken = 0

    # -- compile -------------------------------------------------------------------------------
    def _compile_one(self, tid: int, template: str) -> _Compiled:
        text = template.strip()
        out: list[str] = []
        literal = wild = 0
        pos = 0
        chunks: list[str] = []
        for m in _PIECE.finditer(text):
            if m.start() > pos:
                chunk = text[pos : m.start()]
                out.append(re.escape(chunk))
                literal += len(chunk)
                chunks.append(chunk)
            piece = m.group(0)
            if piece == DRAIN_WILDCARD:
                out.append(r"\S+")  # Drain3 clusters lines of equal token count: one wildcard, one token
                wild += 1
            elif piece in _WILDCARDS:
                out.append(".*?")
                wild += 1
            elif m.group(1) is not None:
                name = m.group(1)
                rx = self._mask_regex.get(name)
                if rx is None:
                    out.append(r"(?:\S+)")
                else:
                    out.append(f"(?:{re.escape(piece)}|{rx})")
                wild += 1
                literal += 1  # a typed mask says more than a bare wildcard
            else:
                out.append(r"\s+")
            pos = m.end()
        if pos < len(text):
            out.append(re.escape(text[pos:]))
            literal += len(text) - pos
            chunks.append(text[pos:])
        regex = "".join(out)
        try:
            groups = re.compile(regex).groups  # capturing groups of mask regexes shift the outer ones
        except re.error as exc:  # only a broken mask regex can cause this
            raise ConfigError(f"template {tid} {template!r} does not compile: {exc}") from exc
        tokens = text.split()
        first = tokens[0] if tokens and not _PIECE.search(tokens[0]) else None
        literals = tuple(sorted(set(chunks), key=len, reverse=True)[:3])
        return _Compiled(tid, regex, groups, literal, wild, first, literals)

    def _pattern_for(self, first: str) -> tuple[re.Pattern[str], dict[int, int]]:
        """The alternation of one first token's templates, most specific first, compiled on first use.

        `fullmatch(...).lastindex` → template id (each template's outer group closes last).
        """
        hit = self._combined.get(first)
        if hit is not None:
            return hit
        group_to_tid: dict[int, int] = {}
        parts: list[str] = []
        gi = 1
        for c in self._by_first[first]:  # already in rank order
            group_to_tid[gi] = c.tid
            parts.append(f"({c.regex})")
            gi += 1 + c.groups
        hit = (re.compile("|".join(parts), re.DOTALL), group_to_tid)
        self._combined[first] = hit
        return hit

    def _wild_pattern(self, c: _Compiled) -> re.Pattern[str]:
        pattern = self._wild_compiled.get(c.tid)
        if pattern is None:
            pattern = self._wild_compiled[c.tid] = re.compile(c.regex, re.DOTALL)
        return pattern

    # -- matching ------------------------------------------------------------------------------
    def match_known(self, content: str) -> int:
        """Id of the most specific known template that matches the whole message, else UNKNOWN_EVENT.

        Never creates templates and never touches the Drain3 store of new templates. A message the
        template regexes miss is tried once more as Drain3 saw it in training: masked mask by mask, in
        order. Why: Drain3 masks sequentially, so a later mask's look-behind reads the earlier mask's
        text, not the raw characters; in one regex `hdfs://<:IP:><:PATH:>` cannot match
        `hdfs://10.1.2.3:9000/a/b`, because PATH refuses to follow a digit, and every such line would
        become a "new" template identical to a known one.
        """
        text = content.strip()
        best = self._match_text(text)
        if best == UNKNOWN_EVENT and self._masker is not None and len(text) <= MAX_MATCH_CHARS:
            masked = self._masker.mask(text)
            if masked != text:
                best = self._match_text(masked)
                if best != UNKNOWN_EVENT:
                    self.stats.matched_masked += 1
        return best

    def _match_text(self, text: str) -> int:
        exact = self._exact.get(text)
        if exact is not None:
            return exact
        if len(text) > MAX_MATCH_CHARS:
            return UNKNOWN_EVENT
        tokens = text.split(None, 1)
        best = UNKNOWN_EVENT
        best_rank = len(self._rank)
        if tokens and tokens[0] in self._by_first:
            pattern, group_to_tid = self._pattern_for(tokens[0])
            m = pattern.fullmatch(text)
            if m is not None:
                best = group_to_tid[m.lastindex]  # type: ignore[index]
                best_rank = self._rank[best]
        # Wildcard-led templates, most specific first, only while they outrank what was found; a
        # substring test on their literal chunks skips most regex runs.
        for c in self._wild:
            if self._rank[c.tid] >= best_rank:
                break
            if all(lit in text for lit in c.literals) and self._wild_pattern(c).fullmatch(text):
                return c.tid
        return best

    def event_id(self, content: str) -> int:
        """Event id of one message; an unmatched message gets a new template id (counted)."""
        stats = self.stats
        stats.lines += 1
        hit = self._cache.get(content)
        if hit is not None:
            stats.cache_hits += 1
            return hit
        eid = self.match_known(content)
        if eid != UNKNOWN_EVENT:
            stats.matched += 1
        else:
            eid = self._learn(content.strip())
        if eid != UNKNOWN_EVENT:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()  # bounded memory; repeats refill it quickly
            if self.cache_size:
                self._cache[content] = eid
        return eid

    def transform(self, contents: Sequence[str]) -> list[int]:
        return [self.event_id(c) for c in contents]

    def _learn(self, text: str) -> int:
        store = self._new
        if len(store) >= self.max_new_templates or self._new_chars >= MAX_NEW_TEMPLATE_CHARS:
            local = store.match_line(text)
            if local == UNKNOWN_EVENT:
                self.stats.overflow += 1
                self._say_full()
                return UNKNOWN_EVENT
        else:
            before = len(store)
            local = store.fit_line(text)
            self._fits += 1
            if len(store) > before:
                self.stats.new_templates += 1
                self._new_chars += len(text)
                logger.debug("new template %d: %s", self.n_known + local, store.templates[local])
        self.stats.new_lines += 1
        return self.n_known + local

    def _say_full(self) -> None:
        """Warn once that new messages are no longer learned. Why: past the bound a new failure's message reads as
        `<unknown template>` (it still costs a new template's surprise), and nothing said the bound was reached."""
        if self._said_full:
            return
        self._said_full = True
        logger.warning("%d new templates (%d characters) learned since the detector was loaded, its bound: lines "
                       "that match none of them are now read as one unknown template (matcher overflow, counted); "
                       "a reload (serve: POST /v1/reload; detect: a restart) starts the count again",
                       len(self._new), self._new_chars)

    # -- templates -----------------------------------------------------------------------------
    def template(self, event_id: int) -> str:
        if 0 <= event_id < self.n_known:
            return self.known[event_id]
        cluster = self._new.miner.drain.id_to_cluster.get(event_id - self.n_known + 1)
        if event_id >= self.n_known and cluster is not None:
            return cluster.get_template()
        raise KeyError(f"event id {event_id}: not a known ({self.n_known}) or new ({len(self._new)}) template")

    @property
    def templates(self) -> list[str]:
        """Known templates, then new ones (their text may still generalise as more lines arrive)."""
        return self.known + self._new.templates

    def __len__(self) -> int:
        return self.n_known + len(self._new)

    @property
    def n_new(self) -> int:
        return len(self._new)

    def is_new(self, event_id: int) -> bool:
        return event_id >= self.n_known

    def take_new(self) -> list[tuple[int, str]]:
        """New templates created, or whose text changed (Drain generalised them), since the last call.

        The caller embeds these (id, text) pairs and stores the vectors under the id. Cheap when
        nothing was mined since the last call, so callers may call it after every line.
        """
        if self._fits == self._fits_taken:
            return []
        self._fits_taken = self._fits
        out: list[tuple[int, str]] = []
        for local, text in enumerate(self._new.templates):
            eid = self.n_known + local
            if self._new_seen.get(eid) != text:
                self._new_seen[eid] = text
                out.append((eid, text))
        return out


def _mask_regexes(parse: ParseConfig) -> dict[str, str]:
    """Mask name → one regex (names used by several masks become an alternation), as Drain3 masks."""
    masks: list[tuple[str, str]] = [(m.pattern, m.name) for m in parse.extra_masks]  # as Drain3 applies them
    masks += list(default_masks(parse))
    by_name: dict[str, list[str]] = {}
    for pattern, name in masks:
        by_name.setdefault(name, []).append(pattern)
    return {name: "|".join(f"(?:{p})" for p in pats) for name, pats in by_name.items()}
