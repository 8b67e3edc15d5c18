"""Push rules: a user's rules merged with the server defaults, and the changes clients
make through /pushrules.

The merged ruleset is what clients see (GET /pushrules/, ``m.push_rules`` in /sync)
and what the evaluator runs on: within each kind the user's rules come before the
server-default ones, except ``.m.rule.master``, which always comes first. Server-default
rules cannot be replaced, deleted or used as ``before``/``after`` anchors; only their
``enabled`` state and ``actions`` can change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from homeserver.handlers.account_data import is_valid_room_id, to_json_text
from homeserver.http.errors import Codes, MatrixError, not_found
from homeserver.push.default_rules import KINDS, MASTER_RULE_ID, default_rules, is_default_rule
from homeserver.push.evaluator import MAX_SAFE_INTEGER
from storage.stores.push_rules import (
    PushRuleNotFoundError,
    PushRulesStore,
    RelativeRuleNotFoundError,
    StoredRule,
    TooManyPushRulesError,
)

JsonDict = dict[str, Any]

MAX_RULES_PER_USER = 500  # every rule is evaluated for every event the user may see
MAX_RULE_ID_LENGTH = 255
MAX_STRING_LENGTH = 1024  # keys, patterns and condition values
MAX_LIST_LENGTH = 100  # actions and conditions per rule
KNOWN_ACTIONS = frozenset({"notify", "dont_notify", "coalesce"})  # the last two: legacy no-ops
_CONDITION_STRINGS: dict[str, tuple[str, ...]] = {
    "event_match": ("key", "pattern"),
    "event_property_is": ("key",),
    "event_property_contains": ("key",),
    "room_member_count": ("is",),
    "sender_notification_permission": ("key",),
    "contains_display_name": (),
}


def invalid(msg: str) -> MatrixError:
    return MatrixError(400, msg, Codes.INVALID_PARAM)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise invalid(f"Unknown push rule kind: must be one of {', '.join(KINDS)}")


def check_actions(actions: Any) -> list[Any]:
    """Actions are ``notify`` (or the legacy no-ops) and ``set_tweak`` objects; the
    ``highlight`` tweak takes a boolean and ``sound`` a string, other tweaks pass through."""
    if not isinstance(actions, list):
        raise invalid("'actions' must be a list")
    if len(actions) > MAX_LIST_LENGTH:
        raise invalid("Too many actions")
    for action in actions:
        if isinstance(action, str):
            if action not in KNOWN_ACTIONS:
                raise invalid("Unrecognised action")
            continue
        if not isinstance(action, dict) or not isinstance(action.get("set_tweak"), str):
            raise invalid("Unrecognised action")
        tweak, value = action["set_tweak"], action.get("value")
        if tweak == "highlight" and "value" in action and not isinstance(value, bool):
            raise invalid("The highlight tweak takes a boolean value")
        if tweak == "sound" and not isinstance(value, str):
            raise invalid("The sound tweak takes a string value")
    return actions


def _check_condition(cond: JsonDict) -> None:
    kind = cond.get("kind")
    required = _CONDITION_STRINGS.get(kind) if isinstance(kind, str) else None
    if required is None:
        return  # unknown kinds are stored and never match (spec)
    for name in required:
        value = cond.get(name)
        if not isinstance(value, str):
            raise invalid(f"Condition '{kind}' needs a string '{name}'")
        if len(value) > MAX_STRING_LENGTH:
            raise invalid(f"Condition '{kind}': '{name}' is too long")
    if kind == "room_member_count" and not _is_member_count(cond["is"]):
        raise invalid("room_member_count 'is' must be a number, optionally after ==, <, >, <= or >=")
    if kind in ("event_property_is", "event_property_contains"):
        if "value" not in cond:
            raise MatrixError(400, f"Condition '{kind}' needs a 'value'", Codes.MISSING_PARAM)
        value = cond["value"]
        if isinstance(value, str) and len(value) > MAX_STRING_LENGTH:
            raise invalid(f"Condition '{kind}': 'value' is too long")
        if isinstance(value, int) and not isinstance(value, bool) \
                and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise invalid(f"Condition '{kind}': 'value' is out of range")


def _is_member_count(spec: str) -> bool:
    digits = spec.lstrip("=<>")
    return spec[: len(spec) - len(digits)] in ("", "==", "<", ">", "<=", ">=") and \
        digits.isascii() and digits.isdigit() and len(digits) <= 9


def check_rule_id_for_put(kind: str, rule_id: str) -> None:
    """A rule id a client may create: not reserved, no slashes, and for room/sender
    rules the room or user it is about. A room rule may also be keyed by a room alias,
    as Synapse accepts (SyTest uses ``#a:example.com``): the rule is stored and listed,
    but since its implied condition compares the event's ``room_id`` it never matches."""
    if rule_id.startswith("."):
        raise invalid("Cannot add or replace a server-default rule (ids starting with '.')")
    if "/" in rule_id or "\\" in rule_id:
        raise invalid("rule_id may not contain slashes or backslashes")
    if len(rule_id) > MAX_RULE_ID_LENGTH or any(ord(c) < 0x20 or ord(c) == 0x7F for c in rule_id):
        raise invalid("Invalid rule_id")
    if kind == "room" and not (is_valid_room_id(rule_id) or _is_room_alias(rule_id)):
        raise invalid("The rule_id of a room rule must be a room ID")
    if kind == "sender" and not _is_user_id(rule_id):
        raise invalid("The rule_id of a sender rule must be a user ID")


def _is_room_alias(value: str) -> bool:
    local, sep, server = value[1:].partition(":")
    return value.startswith("#") and bool(local) and bool(sep) and bool(server) \
        and not any(ord(c) <= 0x20 for c in value)


def _is_user_id(value: str) -> bool:
    local, sep, server = value[1:].partition(":")
    return value.startswith("@") and bool(local) and bool(sep) and bool(server) \
        and len(value.encode("utf-8")) <= MAX_RULE_ID_LENGTH


def _stored_to_json(rule: StoredRule) -> JsonDict:
    out: JsonDict = {"rule_id": rule.rule_id, "default": False, "enabled": rule.enabled,
                     "actions": json.loads(rule.actions_json)}
    if rule.kind == "content":
        out["pattern"] = rule.pattern or ""
    elif rule.kind in ("override", "underride"):
        out["conditions"] = json.loads(rule.conditions_json)
    return out


class PushRulesHandler:
    def __init__(self, store: PushRulesStore) -> None:
        self._store = store
        # Told (position, user_id) after every change, e.g. to wake that user's /sync
        # (positions are on the account_data stream).
        self.on_change: list[Callable[[int, str], None]] = []

    def _changed(self, position: int, user_id: str) -> None:
        for listener in self.on_change:
            listener(position, user_id)

    async def get_ruleset(self, user_id: str) -> dict[str, list[JsonDict]]:
        """Every rule of the user, by kind, in evaluation order."""
        stored, overrides = await self._store.get_rules(user_id)
        defaults = default_rules(user_id)
        for kind, rules in defaults.items():
            for rule in rules:
                change = overrides.get((kind, rule["rule_id"]))
                if change is None:
                    continue
                if change.enabled is not None:
                    rule["enabled"] = change.enabled
                if change.actions_json is not None:
                    rule["actions"] = json.loads(change.actions_json)
        merged: dict[str, list[JsonDict]] = {}
        for kind in KINDS:
            own = [_stored_to_json(r) for r in stored if r.kind == kind]
            server = defaults[kind]
            first = [r for r in server if r["rule_id"] == MASTER_RULE_ID]
            rest = [r for r in server if r["rule_id"] != MASTER_RULE_ID]
            merged[kind] = first + own + rest
        return merged

    async def get_push_rules_json(self, user_id: str) -> JsonDict:
        """The content of the ``m.push_rules`` account data event (and GET /pushrules/)."""
        return {"global": await self.get_ruleset(user_id)}

    async def users_with_own_rules(self, user_ids: list[str]) -> set[str]:
        """Which of these users run more than the server defaults (push/bulk.py)."""
        return await self._store.users_with_own_rules(user_ids)

    async def get_stream_id(self, user_id: str) -> int:
        """Position of the user's last push rule change, for /sync (0: never)."""
        return await self._store.get_stream_id(user_id)

    async def get_kind(self, user_id: str, kind: str) -> list[JsonDict]:
        """One kind's rules, in evaluation order (GET /pushrules/global/{kind}/)."""
        check_kind(kind)
        return (await self.get_ruleset(user_id))[kind]

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> JsonDict:
        check_kind(kind)
        for rule in (await self.get_ruleset(user_id))[kind]:
            if rule["rule_id"] == rule_id:
                return rule
        raise not_found("Push rule not found")

    async def set_rule(
        self, user_id: str, kind: str, rule_id: str, body: JsonDict,
        before: str | None = None, after: str | None = None,
    ) -> None:
        """Create or replace a user-defined rule (PUT /pushrules/global/{kind}/{ruleId})."""
        check_kind(kind)
        check_rule_id_for_put(kind, rule_id)
        actions = check_actions(body.get("actions"))
        conditions: list[JsonDict] = []
        pattern: str | None = None
        if kind in ("override", "underride"):
            conditions = body.get("conditions") or []
            if len(conditions) > MAX_LIST_LENGTH:
                raise invalid("Too many conditions")
            for cond in conditions:
                _check_condition(cond)
        elif kind == "content":
            pattern = body.get("pattern")
            if pattern is None:
                raise MatrixError(400, "Content rules need a 'pattern'", Codes.MISSING_PARAM)
            if len(pattern) > MAX_STRING_LENGTH:
                raise invalid("'pattern' is too long")
        for name, anchor in (("before", before), ("after", after)):
            if anchor is not None and (anchor.startswith(".") or is_default_rule(kind, anchor)):
                raise invalid(f"Cannot add a rule relative to a server-default rule ('{name}')")
        try:
            position = await self._store.upsert_rule(
                user_id, kind, rule_id, to_json_text(conditions), pattern, to_json_text(actions),
                before, after, MAX_RULES_PER_USER,
            )
        except RelativeRuleNotFoundError as e:
            raise MatrixError(400, f"before/after rule not found: {e.rule_id}", Codes.UNKNOWN) from e
        except TooManyPushRulesError as e:
            raise MatrixError(403, f"Too many push rules (at most {MAX_RULES_PER_USER})",
                              Codes.FORBIDDEN) from e
        self._changed(position, user_id)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        check_kind(kind)
        if is_default_rule(kind, rule_id):
            raise invalid("Cannot delete a server-default rule")
        try:
            position = await self._store.delete_rule(user_id, kind, rule_id)
        except PushRuleNotFoundError as e:
            raise not_found("Push rule not found") from e
        self._changed(position, user_id)

    async def get_enabled(self, user_id: str, kind: str, rule_id: str) -> bool:
        return bool((await self.get_rule(user_id, kind, rule_id))["enabled"])

    async def get_actions(self, user_id: str, kind: str, rule_id: str) -> list[Any]:
        return list((await self.get_rule(user_id, kind, rule_id))["actions"])

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: bool) -> None:
        check_kind(kind)
        try:
            if is_default_rule(kind, rule_id):
                position = await self._store.set_default_enabled(user_id, kind, rule_id, enabled)
            else:
                position = await self._store.set_rule_enabled(user_id, kind, rule_id, enabled)
        except PushRuleNotFoundError as e:
            raise not_found("Push rule not found") from e
        self._changed(position, user_id)

    async def set_actions(self, user_id: str, kind: str, rule_id: str, actions: Any) -> None:
        check_kind(kind)
        text = to_json_text(check_actions(actions))
        try:
            if is_default_rule(kind, rule_id):
                position = await self._store.set_default_actions(user_id, kind, rule_id, text)
            else:
                position = await self._store.set_rule_actions(user_id, kind, rule_id, text)
        except PushRuleNotFoundError as e:
            raise not_found("Push rule not found") from e
        self._changed(position, user_id)
