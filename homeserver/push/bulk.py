"""Push rules of many users at once, for the members whose ruleset is the server default.

Evaluating every joined member's rules on every event costs O(members) per event, so
O(N²) as a room grows (issue 18: 71 % of the CPU of 10,000 state changes in one room).
But a member without any rule of their own and without changes to the predefined ones
runs exactly ``default_rules(user_id)``, which depends on the user only through four
rules: ``.m.rule.invite_for_me`` (``state_key``), ``.m.rule.is_user_mention`` (the
mention list), ``.m.rule.contains_display_name`` (their display name) and
``.m.rule.contains_user_name`` (their localpart). Every other rule reads only the event
and the room (member count, the sender's power level), so it is evaluated once per
event for all such members; the four are checked per member only when their
user-independent conditions hold, and most of those checks start from the event
(the mentioned ids, the invitee) rather than from the member list.

Results are identical to :func:`homeserver.push.evaluator.evaluate` over
``default_rules(user_id)`` (tests/unit/test_push_bulk.py compares both): the shared
rules come from ``default_rules`` itself (checked at import to be user-independent)
and the per-member checks call the same matchers, with exact ASCII pre-filters in
front of the regular expressions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from homeserver.push.default_rules import KINDS, LEGACY_MENTION_RULE_IDS, default_rules
from homeserver.push.evaluator import (
    NO_MATCH,
    Evaluation,
    PushContext,
    condition_matches,
    contains_words,
    glob_matches,
    interpret_actions,
    lookup,
    rule_matches,
)

JsonDict = dict[str, Any]
# Candidates: user id -> display name in the room (None: none set).
Candidates = Mapping[str, "str | None"]

INVITE_FOR_ME = ".m.rule.invite_for_me"
IS_USER_MENTION = ".m.rule.is_user_mention"
CONTAINS_DISPLAY_NAME = ".m.rule.contains_display_name"
CONTAINS_USER_NAME = ".m.rule.contains_user_name"
PER_USER_RULES = frozenset({INVITE_FOR_ME, IS_USER_MENTION, CONTAINS_DISPLAY_NAME,
                            CONTAINS_USER_NAME})
_GLOB_CHARS = frozenset("*?")


@dataclass(frozen=True)
class BulkEvaluation:
    """Every candidate's outcome: ``users`` for those decided by a per-user rule (or
    being the sender), ``rest`` for all the others."""

    rest: Evaluation
    users: dict[str, Evaluation] = field(default_factory=dict)

    def get(self, user_id: str) -> Evaluation:
        return self.users.get(user_id, self.rest)


@dataclass(frozen=True)
class _Step:
    kind: str
    rule: JsonDict
    outcome: Evaluation
    per_user: Callable[[Mapping[str, Any], Candidates, dict[str, Evaluation]],
                       Iterator[str]] | None


def _outcome(kind: str, rule: JsonDict) -> Evaluation:
    actions = list(rule.get("actions") or [])
    notify, highlight, sound = interpret_actions(actions)
    return Evaluation(actions, notify, highlight, sound, kind, rule.get("rule_id"))


def _literal_full(pattern: str, value: str) -> bool:
    """``glob_matches(pattern, value)``, with an exact shortcut for ASCII text without
    glob characters (there, case-insensitive matching is ASCII lower-casing)."""
    if pattern.isascii() and value.isascii() and not _GLOB_CHARS.intersection(pattern):
        return pattern.lower() == value.lower()
    return glob_matches(pattern, value)


def _may_contain(body: str, body_lower: str | None, text: str) -> bool:
    """False only when ``text`` cannot occur in ``body`` case-insensitively: both ASCII
    and no lower-cased occurrence (non-ASCII text has wider case folding)."""
    if body_lower is None or not text.isascii():
        return True
    return text.lower() in body_lower


def _invitee(conditions: list[Any]) -> Callable[[Mapping[str, Any], Candidates,
                                                  dict[str, Evaluation]], Iterator[str]]:
    shared = [c for c in conditions if c.get("key") != "state_key"]

    def matches(event: Mapping[str, Any], candidates: Candidates,
                decided: dict[str, Evaluation]) -> Iterator[str]:
        if not all(condition_matches(c, event, _SHARED_CTX) for c in shared):
            return
        state_key = lookup(event, "state_key")
        if not isinstance(state_key, str):
            return
        if state_key in candidates and state_key not in decided \
                and _literal_full(state_key, state_key):
            yield state_key  # the usual case: the invitee's own id
        for user_id in candidates:  # ids matching case-insensitively or as a glob
            if user_id != state_key and user_id not in decided \
                    and _literal_full(user_id, state_key):
                yield user_id
    return matches


def _mentioned(key: str) -> Callable[[Mapping[str, Any], Candidates, dict[str, Evaluation]],
                                     Iterator[str]]:
    def matches(event: Mapping[str, Any], candidates: Candidates,
                decided: dict[str, Evaluation]) -> Iterator[str]:
        values = lookup(event, key)
        if not isinstance(values, list):
            return
        # scalar_equal(v, user_id) for a string user_id: v is exactly that string.
        for value in dict.fromkeys(v for v in values if type(v) is str):
            if value in candidates and value not in decided:
                yield value
    return matches


def _display_name_in_body(event: Mapping[str, Any], candidates: Candidates,
                          decided: dict[str, Evaluation]) -> Iterator[str]:
    body = lookup(event, "content.body")
    if not isinstance(body, str):
        return
    body_lower = body.lower() if body.isascii() else None
    for user_id, name in candidates.items():
        if name and user_id not in decided and _may_contain(body, body_lower, name) \
                and contains_words(body, name):
            yield user_id


def _user_name_in_body(event: Mapping[str, Any], candidates: Candidates,
                       decided: dict[str, Evaluation]) -> Iterator[str]:
    body = lookup(event, "content.body")
    if not isinstance(body, str):
        return
    body_lower = body.lower() if body.isascii() else None
    for user_id in candidates:
        if user_id in decided:
            continue
        localpart = _localpart(user_id)
        if (_GLOB_CHARS.intersection(localpart) or _may_contain(body, body_lower, localpart)) \
                and glob_matches(localpart, body, word=True):
            yield user_id


def _localpart(user_id: str) -> str:
    # As default_rules.localpart_of (kept inline: called per member per message).
    return user_id[1:].partition(":")[0] if user_id.startswith("@") else user_id


# Rules read no user: conditions get a context whose user fields are unused.
_SHARED_CTX = PushContext(user_id="")
_PLACEHOLDERS = ("@bulk-a:placeholder.invalid", "@bulk-b:placeholder.invalid")


def _build_steps() -> tuple[_Step, ...]:
    """The predefined rules in evaluation order, each marked shared or per-user; fails
    at import if a rule outside PER_USER_RULES turns out to depend on the user."""
    a, b = (default_rules(p) for p in _PLACEHOLDERS)
    steps = []
    for kind in KINDS:
        assert len(a[kind]) == len(b[kind])
        for rule, other in zip(a[kind], b[kind], strict=True):
            rule_id = rule["rule_id"]
            per_user: Callable[..., Iterator[str]] | None = None
            if rule_id == INVITE_FOR_ME:
                per_user = _invitee(rule["conditions"])
            elif rule_id == IS_USER_MENTION:
                (cond,) = rule["conditions"]
                assert cond["kind"] == "event_property_contains" and cond["value"] == _PLACEHOLDERS[0]
                per_user = _mentioned(cond["key"])
            elif rule_id == CONTAINS_DISPLAY_NAME:
                assert rule["conditions"] == [{"kind": "contains_display_name"}]
                per_user = _display_name_in_body
            elif rule_id == CONTAINS_USER_NAME:
                assert kind == "content" and rule["pattern"] == "bulk-a"
                per_user = _user_name_in_body
            else:
                assert rule == other, f"{rule_id} depends on the user"
            if rule_id == INVITE_FOR_ME:
                assert rule["conditions"][2] == {"kind": "event_match", "key": "state_key",
                                                 "pattern": _PLACEHOLDERS[0]}
            steps.append(_Step(kind, rule, _outcome(kind, rule), per_user))
    assert {s.rule["rule_id"] for s in steps if s.per_user} == PER_USER_RULES
    return tuple(steps)


_STEPS = _build_steps()


def evaluate_defaults(event: Mapping[str, Any], candidates: Candidates,
                      member_count: int | None, sender_power_level: int | None,
                      notification_power_levels: Mapping[str, int]) -> BulkEvaluation:
    """What ``evaluate(default_rules(u), event, ctx(u))`` gives for every candidate
    ``u``, where ``ctx(u)`` has ``u``'s display name from ``candidates`` and the room
    values given here. Cost: the rules once, plus the per-user rules' candidates (all
    of them only for a ``content.body`` the display names or localparts are looked for
    in: a message, which then notifies them all anyway)."""
    ctx = PushContext(user_id="", member_count=member_count,
                      sender_power_level=sender_power_level,
                      notification_power_levels=notification_power_levels)
    decided: dict[str, Evaluation] = {}
    sender = event.get("sender")
    if isinstance(sender, str) and sender in candidates:
        decided[sender] = NO_MATCH  # the user's own events never notify them
    content = event.get("content")
    legacy_off = isinstance(content, Mapping) and "m.mentions" in content
    for step in _STEPS:
        rule = step.rule
        if legacy_off and rule["rule_id"] in LEGACY_MENTION_RULE_IDS:
            continue
        if not rule.get("enabled", False):
            continue
        if step.per_user is None:
            if rule_matches(step.kind, rule, event, ctx):
                return BulkEvaluation(step.outcome, decided)
            continue
        for user_id in list(step.per_user(event, candidates, decided)):
            decided[user_id] = step.outcome
    return BulkEvaluation(NO_MATCH, decided)
