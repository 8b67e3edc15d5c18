"""A pure push rule evaluator: (ruleset, event, room context) → the actions that apply.

No I/O: callers pass the user's merged ruleset (as served by /pushrules/) and what the
conditions need to know about the room. Glob matching never backtracks without bound:
patterns are split on ``*`` and matched segment by segment with leftmost-greedy
placement, which is exact for ``*``/``?`` globs and linear in the value per segment,
so a user-chosen pattern cannot make a long message body expensive to evaluate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from homeserver.push.default_rules import KINDS, LEGACY_MENTION_RULE_IDS

JsonDict = dict[str, Any]

# The spec's word boundary: anything outside [A-Za-z0-9_] (and the ends of the value).
_NOT_AFTER_WORD = r"(?<![A-Za-z0-9_])"
_NOT_BEFORE_WORD = r"(?![A-Za-z0-9_])"
_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]{1,9})$")
MAX_SAFE_INTEGER = 2**53 - 1
DEFAULT_NOTIFICATION_LEVEL = 50  # spec default of notifications.room (and Synapse's for any key)


@dataclass(frozen=True)
class PushContext:
    """What conditions need beyond the event itself, from the room's current state.

    ``display_name`` is the user's display name in the room (None: none set);
    ``member_count`` the number of joined members; ``sender_power_level`` the sender's
    level (None: unknown, so permission conditions fail closed);
    ``notification_power_levels`` the ``notifications`` object of the power levels.
    """

    user_id: str
    member_count: int | None = None
    display_name: str | None = None
    sender_power_level: int | None = None
    notification_power_levels: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """The outcome for one user: the matching rule's actions and what they mean."""

    actions: list[Any]
    notify: bool
    highlight: bool
    sound: str | None = None
    kind: str | None = None
    rule_id: str | None = None


NO_MATCH = Evaluation(actions=[], notify=False, highlight=False)


def split_key(key: str) -> list[str]:
    """Split a dot-separated property path: ``\\.`` is a literal dot, ``\\\\`` a literal
    backslash; any other backslash stands for itself."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            current.append(key[i + 1])
            i += 2
            continue
        if ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


_MISSING = object()


def lookup(event: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted path, or ``_MISSING`` (paths only descend into objects)."""
    value: Any = event
    for part in _split_key_cached(key):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


@lru_cache(maxsize=4096)
def _split_key_cached(key: str) -> tuple[str, ...]:
    return tuple(split_key(key))


class GlobMatcher:
    """A case-insensitive ``*``/``?`` glob, matched against a whole value or, in word
    mode, against any substring that starts and ends at a word boundary."""

    def __init__(self, pattern: str, word: bool) -> None:
        self.word = word
        segments = pattern.split("*")
        self._star = len(segments) > 1
        flags = re.IGNORECASE | re.DOTALL
        body = [_segment_regex(s) for s in segments]
        first, last = body[0], body[-1]
        if not self._star:
            whole = f"{_NOT_AFTER_WORD}{first}{_NOT_BEFORE_WORD}" if word else first
            self._single = re.compile(whole, flags)
            return
        self._first = re.compile((_NOT_AFTER_WORD if word else "") + first, flags)
        self._middle = [re.compile(s, flags) for s in body[1:-1] if s]
        self._last = re.compile(last + (_NOT_BEFORE_WORD if word else r"\Z"), flags)
        self._last_len = len(segments[-1])

    def matches(self, value: str) -> bool:
        if not self._star:
            found = self._single.search(value) if self.word else self._single.fullmatch(value)
            return found is not None
        # Leftmost-greedy placement: the earliest start and earliest middle segments
        # leave the most room for what follows, so one pass decides the match.
        first = self._first.search(value) if self.word else self._first.match(value)
        if first is None:
            return False
        pos = first.end()
        for seg in self._middle:
            found = seg.search(value, pos)
            if found is None:
                return False
            pos = found.end()
        if self.word:
            return self._last.search(value, pos) is not None
        start = len(value) - self._last_len
        return start >= pos and self._last.match(value, start) is not None


def _segment_regex(segment: str) -> str:
    return "".join("." if ch == "?" else re.escape(ch) for ch in segment)


@lru_cache(maxsize=4096)
def glob_matcher(pattern: str, word: bool) -> GlobMatcher:
    return GlobMatcher(pattern, word)


def glob_matches(pattern: str, value: str, word: bool = False) -> bool:
    """Spec glob matching, case-insensitive; ``word``: the content.body rule."""
    return glob_matcher(pattern, word).matches(value)


@lru_cache(maxsize=1024)
def _literal_word_regex(text: str) -> re.Pattern[str]:
    return re.compile(_NOT_AFTER_WORD + re.escape(text) + _NOT_BEFORE_WORD,
                      re.IGNORECASE | re.DOTALL)


def contains_words(body: str, text: str) -> bool:
    """Whether ``text`` (taken literally) occurs in ``body`` between word boundaries."""
    return bool(text) and _literal_word_regex(text).search(body) is not None


def _is_scalar(value: Any) -> bool:
    if value is None or isinstance(value, str | bool):
        return True
    return isinstance(value, int) and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER


def scalar_equal(a: Any, b: Any) -> bool:
    """Exact equality of non-compound canonical JSON values (``true`` is not ``1``)."""
    return _is_scalar(a) and _is_scalar(b) and type(a) is type(b) and a == b


def _member_count_matches(spec: Any, count: int | None) -> bool:
    if count is None or not isinstance(spec, str):
        return False
    m = _MEMBER_COUNT.match(spec)
    if m is None:
        return False
    op, number = m.group(1) or "==", int(m.group(2))
    return {
        "==": count == number, "<": count < number, ">": count > number,
        "<=": count <= number, ">=": count >= number,
    }[op]


def condition_matches(cond: Any, event: Mapping[str, Any], ctx: PushContext) -> bool:
    """One condition; unknown kinds and malformed parameters never match."""
    if not isinstance(cond, Mapping):
        return False
    kind = cond.get("kind")
    if kind == "event_match":
        key, pattern = cond.get("key"), cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return False
        value = lookup(event, key)
        return isinstance(value, str) and glob_matches(pattern, value, word=key == "content.body")
    if kind == "event_property_is":
        key = cond.get("key")
        if not isinstance(key, str) or "value" not in cond:
            return False
        return scalar_equal(lookup(event, key), cond["value"])
    if kind == "event_property_contains":
        key = cond.get("key")
        if not isinstance(key, str) or "value" not in cond:
            return False
        values = lookup(event, key)
        return isinstance(values, list) and any(scalar_equal(v, cond["value"]) for v in values)
    if kind == "contains_display_name":
        body = lookup(event, "content.body")
        return isinstance(body, str) and bool(ctx.display_name) and \
            contains_words(body, ctx.display_name or "")
    if kind == "room_member_count":
        return _member_count_matches(cond.get("is"), ctx.member_count)
    if kind == "sender_notification_permission":
        key = cond.get("key")
        if not isinstance(key, str) or ctx.sender_power_level is None:
            return False
        required = ctx.notification_power_levels.get(key, DEFAULT_NOTIFICATION_LEVEL)
        if not isinstance(required, int) or isinstance(required, bool):
            required = DEFAULT_NOTIFICATION_LEVEL
        return ctx.sender_power_level >= required
    return False


def rule_matches(kind: str, rule: Mapping[str, Any], event: Mapping[str, Any],
                 ctx: PushContext) -> bool:
    """Whether an enabled rule of ``kind`` matches (disabled rules never do)."""
    if not rule.get("enabled", False):
        return False
    rule_id = rule.get("rule_id")
    if kind == "room":
        return event.get("room_id") == rule_id
    if kind == "sender":
        return event.get("sender") == rule_id
    if kind == "content":
        body, pattern = lookup(event, "content.body"), rule.get("pattern")
        return isinstance(body, str) and isinstance(pattern, str) and \
            glob_matches(pattern, body, word=True)
    conditions = rule.get("conditions") or []
    if not isinstance(conditions, list):
        return False
    return all(condition_matches(c, event, ctx) for c in conditions)


def interpret_actions(actions: Iterable[Any]) -> tuple[bool, bool, str | None]:
    """(notify, highlight, sound) of an action list; highlight counts only when notifying.

    ``dont_notify`` and ``coalesce`` are legacy no-ops; a ``highlight`` tweak without a
    value means true.
    """
    notify, highlight, sound = False, False, None
    for action in actions:
        if action == "notify":
            notify = True
        elif isinstance(action, Mapping):
            tweak = action.get("set_tweak")
            if tweak == "highlight":
                highlight = action.get("value", True) is True
            elif tweak == "sound" and isinstance(action.get("value"), str):
                sound = action["value"]
    return notify, notify and highlight, sound if notify else None


def _has_mentions(event: Mapping[str, Any]) -> bool:
    content = event.get("content")
    return isinstance(content, Mapping) and "m.mentions" in content


def evaluate(rules: Mapping[str, Any], event: Mapping[str, Any], ctx: PushContext) -> Evaluation:
    """The first matching rule's actions, checking kinds in the spec's order.

    ``rules`` is a ruleset by kind (the ``global`` object of GET /pushrules/), already
    in priority order. The user's own events never notify them (spec: MUST NOT).
    """
    if event.get("sender") == ctx.user_id:
        return NO_MATCH
    legacy_off = _has_mentions(event)
    for kind in KINDS:
        for rule in rules.get(kind) or []:
            if not isinstance(rule, Mapping):
                continue
            if legacy_off and rule.get("rule_id") in LEGACY_MENTION_RULE_IDS:
                continue
            if rule_matches(kind, rule, event, ctx):
                actions = list(rule.get("actions") or [])
                notify, highlight, sound = interpret_actions(actions)
                return Evaluation(actions, notify, highlight, sound, kind, rule.get("rule_id"))
    return NO_MATCH
