"""The redaction algorithm ("Redactions" in each room version's spec).

Redaction is not only for serving redacted events: the reference hash (event id, v12
room id) and every event signature cover the *redacted* form, so this must follow the
spec to the letter or our ids and signatures will not match other servers'.

The keep-lists are derived from the :class:`RoomVersion` table, never from identifiers:

* Versions 1-10 keep the top-level ``origin``, ``membership`` and ``prev_state``;
  content keeps ``membership`` (member), ``creator`` (create), ``join_rule`` (join
  rules), the power level keys without ``invite``, and ``history_visibility``.
  v1-v5 (``special_case_aliases``) also keep ``aliases`` in m.room.aliases; v8+
  (``restricted_joins``) keep ``allow`` in join rules; v9+ keep
  ``join_authorised_via_users_server`` in members.
* Versions 11 and 12 (MSC2176, MSC3821, MSC3989): those three top-level keys are no
  longer kept; create keeps its whole content, redaction keeps ``redacts``, power levels
  keep ``invite``, and member keeps ``third_party_invite.signed``.

``event_id`` is on every keep-list: in v1/v2 it is part of the PDU (and so of the
hashes and signatures); later formats simply do not carry it.

Anything not listed is dropped, including ``unsigned`` (the spec's keep-list does not
name it) and the top-level ``redacts`` of a pre-v11 redaction event.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Any

from homeserver.events.room_versions import RoomVersion, get_room_version

JsonDict = dict[str, Any]

_TOP_LEVEL_V11 = frozenset({
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures",
    "depth", "prev_events", "auth_events", "origin_server_ts",
})
_TOP_LEVEL_V1 = _TOP_LEVEL_V11 | {"prev_state", "origin", "membership"}

_POWER_LEVEL_KEYS_V1 = frozenset({
    "ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default",
})

# Client-format ``unsigned`` keys that reveal nothing of the redacted content.
_CLIENT_UNSIGNED_KEEP = ("age", "transaction_id", "redacted_because")


@cache
def content_keep_lists(version: RoomVersion) -> Mapping[str, frozenset[str]]:
    """Event type -> the content keys a redaction keeps, for ``version``. m.room.create
    in v11+ keeps everything and member's ``third_party_invite.signed`` is nested: both
    are handled in :func:`_prune_content`."""
    member = {"membership"}
    if version.redaction_keeps_authorising_user:
        member.add("join_authorised_via_users_server")
    join_rules = {"join_rule"}
    if version.restricted_joins:
        join_rules.add("allow")
    power = set(_POWER_LEVEL_KEYS_V1)
    rules: dict[str, frozenset[str]] = {
        "m.room.history_visibility": frozenset({"history_visibility"}),
    }
    if version.redaction_v11:
        power.add("invite")
        rules["m.room.redaction"] = frozenset({"redacts"})
    else:
        rules["m.room.create"] = frozenset({"creator"})
    if version.special_case_aliases:
        rules["m.room.aliases"] = frozenset({"aliases"})
    rules["m.room.member"] = frozenset(member)
    rules["m.room.join_rules"] = frozenset(join_rules)
    rules["m.room.power_levels"] = frozenset(power)
    return MappingProxyType(rules)


def top_level_keep_list(version: RoomVersion) -> frozenset[str]:
    """The top-level keys a redaction keeps for ``version``."""
    return _TOP_LEVEL_V11 if version.redaction_v11 else _TOP_LEVEL_V1


def coerce_room_version(room_version: RoomVersion | str) -> RoomVersion:
    """A :class:`RoomVersion` from itself or its identifier.

    Unknown identifiers raise :class:`ValueError`: applying the wrong redaction rules
    would silently produce wrong event ids and signatures.
    """
    if isinstance(room_version, RoomVersion):
        return room_version
    found = get_room_version(room_version)
    if found is None:
        raise ValueError(f"unsupported room version {room_version!r}")
    return found


def _prune_content(event_type: Any, content: JsonDict, version: RoomVersion) -> JsonDict:
    if not isinstance(event_type, str):
        event_type = None  # malformed; no per-type rule applies (and a list is unhashable)
    if version.redaction_v11 and event_type == "m.room.create":
        return copy.deepcopy(content)
    keep = content_keep_lists(version).get(event_type, frozenset()) if event_type else frozenset()
    out = {k: copy.deepcopy(v) for k, v in content.items() if k in keep}
    if version.redaction_v11 and event_type == "m.room.member":
        tpi = content.get("third_party_invite")
        if isinstance(tpi, dict) and "signed" in tpi:
            out["third_party_invite"] = {"signed": copy.deepcopy(tpi["signed"])}
    return out


def prune_event_dict(pdu: JsonDict, room_version: RoomVersion | str) -> JsonDict:
    """The redacted form of a PDU (a new dict; ``pdu`` is not modified).

    ``content`` is always present in the result (``{}`` when the event had none), as
    Synapse does. A PDU whose ``content`` is not an object is malformed and raises
    :class:`ValueError` rather than hashing as if it had been empty.
    """
    if not isinstance(pdu, dict):
        raise ValueError("an event must be a JSON object")
    version = coerce_room_version(room_version)
    keep = top_level_keep_list(version)
    content = pdu.get("content", {})
    if not isinstance(content, dict):
        raise ValueError("event content must be a JSON object")
    out = {k: copy.deepcopy(v) for k, v in pdu.items() if k in keep and k != "content"}
    out["content"] = _prune_content(pdu.get("type"), content, version)
    return out


def redacted_event_for_client(
    event_json: JsonDict,
    room_version: RoomVersion | str,
    redacted_because: JsonDict | None = None,
) -> JsonDict:
    """A client-format event (``event_id``, ``room_id``, ``unsigned``...) as served once
    redacted: pruned like a PDU, with only harmless ``unsigned`` keys kept (``age``,
    ``transaction_id``) plus ``redacted_because`` (the argument wins over an existing one).

    ``prev_content`` and the like are dropped: they would leak what was redacted.
    """
    pruned = prune_event_dict(event_json, room_version)
    old_unsigned = event_json.get("unsigned")
    unsigned: JsonDict = {}
    if isinstance(old_unsigned, dict):
        unsigned = {k: copy.deepcopy(old_unsigned[k]) for k in _CLIENT_UNSIGNED_KEEP if k in old_unsigned}
    if redacted_because is not None:
        unsigned["redacted_because"] = copy.deepcopy(redacted_because)
    if unsigned:
        pruned["unsigned"] = unsigned
    return pruned
