"""The server-default ("predefined") push rules of the Matrix spec, as data.

Rules are spec JSON (``rule_id``, ``default``, ``enabled``, ``actions`` and
``conditions`` or ``pattern``). Some depend on the user: their Matrix ID appears in
``.m.rule.invite_for_me`` and ``.m.rule.is_user_mention``, their localpart in
``.m.rule.contains_user_name``. Only the rules the spec defines are served: Synapse's
unstable (MSC-prefixed) extras would be ids no spec client knows.
"""

from __future__ import annotations

from typing import Any

JsonDict = dict[str, Any]

# The order the spec evaluates kinds in, and serves them in.
KINDS: tuple[str, ...] = ("override", "content", "room", "sender", "underride")

MASTER_RULE_ID = ".m.rule.master"

# Deprecated since v1.7: only enabled for events without an ``m.mentions`` property.
LEGACY_MENTION_RULE_IDS = frozenset({
    ".m.rule.contains_display_name", ".m.rule.roomnotif", ".m.rule.contains_user_name",
})

_SOUND: JsonDict = {"set_tweak": "sound", "value": "default"}
_RING: JsonDict = {"set_tweak": "sound", "value": "ring"}
_HIGHLIGHT: JsonDict = {"set_tweak": "highlight"}


def _match(key: str, pattern: str) -> JsonDict:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _rule(rule_id: str, actions: list[Any], conditions: list[JsonDict] | None = None,
          pattern: str | None = None, enabled: bool = True) -> JsonDict:
    rule: JsonDict = {"rule_id": rule_id, "default": True, "enabled": enabled,
                      "actions": actions}
    if pattern is not None:
        rule["pattern"] = pattern
    else:
        rule["conditions"] = conditions or []
    return rule


def _override_rules(user_id: str) -> list[JsonDict]:
    return [
        _rule(MASTER_RULE_ID, [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [], [_match("content.msgtype", "m.notice")]),
        _rule(".m.rule.invite_for_me", ["notify", _SOUND], [
            _match("type", "m.room.member"),
            _match("content.membership", "invite"),
            _match("state_key", user_id),
        ]),
        _rule(".m.rule.member_event", [], [_match("type", "m.room.member")]),
        _rule(".m.rule.is_user_mention", ["notify", _SOUND, _HIGHLIGHT], [
            {"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids",
             "value": user_id},
        ]),
        _rule(".m.rule.contains_display_name", ["notify", _SOUND, _HIGHLIGHT],
              [{"kind": "contains_display_name"}]),
        _rule(".m.rule.is_room_mention", ["notify", _HIGHLIGHT], [
            {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
            {"kind": "sender_notification_permission", "key": "room"},
        ]),
        _rule(".m.rule.roomnotif", ["notify", _HIGHLIGHT], [
            _match("content.body", "@room"),
            {"kind": "sender_notification_permission", "key": "room"},
        ]),
        _rule(".m.rule.tombstone", ["notify", _HIGHLIGHT], [
            _match("type", "m.room.tombstone"), _match("state_key", ""),
        ]),
        _rule(".m.rule.reaction", [], [_match("type", "m.reaction")]),
        _rule(".m.rule.room.server_acl", [], [
            _match("type", "m.room.server_acl"), _match("state_key", ""),
        ]),
        _rule(".m.rule.suppress_edits", [], [
            {"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type",
             "value": "m.replace"},
        ]),
    ]


def _content_rules(localpart: str) -> list[JsonDict]:
    return [_rule(".m.rule.contains_user_name", ["notify", _SOUND, _HIGHLIGHT],
                  pattern=localpart)]


def _underride_rules() -> list[JsonDict]:
    return [
        _rule(".m.rule.call", ["notify", _RING], [_match("type", "m.call.invite")]),
        _rule(".m.rule.encrypted_room_one_to_one", ["notify", _SOUND], [
            {"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted"),
        ]),
        _rule(".m.rule.room_one_to_one", ["notify", _SOUND], [
            {"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message"),
        ]),
        _rule(".m.rule.message", ["notify"], [_match("type", "m.room.message")]),
        _rule(".m.rule.encrypted", ["notify"], [_match("type", "m.room.encrypted")]),
    ]


def localpart_of(user_id: str) -> str:
    """``@alice:example.org`` → ``alice`` (the whole id without ``@`` if it has no server)."""
    return user_id[1:].partition(":")[0] if user_id.startswith("@") else user_id


def default_rules(user_id: str) -> dict[str, list[JsonDict]]:
    """A fresh copy of every predefined rule for ``user_id``, by kind, in spec order.

    Callers may mutate the result (apply a user's enabled/actions overrides).
    """
    return {
        "override": _override_rules(user_id),
        "content": _content_rules(localpart_of(user_id)),
        "room": [],
        "sender": [],
        "underride": _underride_rules(),
    }


# Which kind each predefined rule id belongs to (user-independent).
DEFAULT_RULE_KINDS: dict[str, str] = {
    rule["rule_id"]: kind
    for kind, rules in default_rules("@user:example.org").items() for rule in rules
}


def is_default_rule(kind: str, rule_id: str) -> bool:
    return DEFAULT_RULE_KINDS.get(rule_id) == kind


