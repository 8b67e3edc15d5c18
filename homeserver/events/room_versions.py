"""The room versions Parley supports (1 to 12) and every rule that differs between them.

This table is the one place where versions differ: code elsewhere asks a
:class:`RoomVersion` for a feature (``version.knock``, ``version.event_format``...) and
never compares identifiers. Each field cites the version that introduced the change;
the spec's "Room Versions" pages (spec.matrix.org/v1.x/rooms/vN) are the source.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum


class EventFormat(IntEnum):
    """How events are identified and how they cite other events."""

    # v1, v2: the origin picks ``$opaque:server`` and carries it in the PDU (``event_id``,
    # covered by the hashes and signatures); prev/auth events are ``[id, {"sha256": b64}]``.
    V1 = 1
    # v3: the event id is ``$`` + the reference hash in standard unpadded Base64.
    V3 = 2
    # v4+: the same in URL-safe unpadded Base64.
    V4 = 3


@dataclass(frozen=True)
class RoomVersion:
    identifier: str
    event_format: EventFormat
    # "v1" (v1), "v2" (v2-v11), "v2.1" (v12: iterative auth checks start from an empty
    # state, and the full conflicted set adds the conflicted state subgraph). The
    # algorithms are in homeserver/events/state_res/ (resolve_state dispatches on this).
    state_res: str
    # v1, v2: auth rule 11 authorises m.room.redaction (redact level, or the same event id
    # domain); from v3 redactions are checked when applied ("Handling redactions").
    redaction_auth_rule: bool
    # v5+: signatures must be checked against keys valid at origin_server_ts.
    enforce_key_validity: bool
    # v1-v5: auth rule 4 for m.room.aliases (state_key must be the sender's domain), and
    # the redaction algorithm keeps ``aliases`` in its content.
    special_case_aliases: bool
    # v6+: events must be strict canonical JSON (integers in range, no floats).
    strict_canonical_json: bool
    # v6+: power level changes check the ``notifications`` entries too (rules 9.4/9.5).
    limit_notifications_power_levels: bool
    # v7+: the ``knock`` membership and join rule.
    knock: bool
    # v8+: the ``restricted`` join rule and ``join_authorised_via_users_server``; the
    # redaction algorithm keeps ``allow`` in m.room.join_rules.
    restricted_joins: bool
    # v9+: the redaction algorithm keeps ``join_authorised_via_users_server`` in members.
    redaction_keeps_authorising_user: bool
    # v10+: the ``knock_restricted`` join rule.
    knock_restricted: bool
    # v10+: power level values must be integers (v1-v9 also accept integer strings, and
    # v1-v5 floats, which are truncated).
    integer_power_levels: bool
    # v11+: the redaction algorithm of MSC2176/MSC3821/MSC3989 (create keeps all content,
    # "origin" and other top-level keys dropped, invite/3pid signed kept in member).
    redaction_v11: bool
    # v11+: m.room.create has no "creator"; the sender is the creator.
    implicit_room_creator: bool
    # v12: room id is "!" + the reference hash of the create event (no server part),
    # create events carry no room_id, creators (sender + additional_creators) have
    # infinite power, and auth_events never include the create event.
    room_id_is_create_hash: bool
    creators_have_infinite_power: bool
    # What /capabilities says about the version ("stable" for every spec version 1-12).
    stability: str = "stable"


V1 = RoomVersion(
    "1", event_format=EventFormat.V1, state_res="v1", redaction_auth_rule=True,
    enforce_key_validity=False, special_case_aliases=True, strict_canonical_json=False,
    limit_notifications_power_levels=False, knock=False, restricted_joins=False,
    redaction_keeps_authorising_user=False, knock_restricted=False,
    integer_power_levels=False, redaction_v11=False, implicit_room_creator=False,
    room_id_is_create_hash=False, creators_have_infinite_power=False,
)
V2 = replace(V1, identifier="2", state_res="v2")
V3 = replace(V2, identifier="3", event_format=EventFormat.V3, redaction_auth_rule=False)
V4 = replace(V3, identifier="4", event_format=EventFormat.V4)
V5 = replace(V4, identifier="5", enforce_key_validity=True)
V6 = replace(V5, identifier="6", special_case_aliases=False, strict_canonical_json=True,
             limit_notifications_power_levels=True)
V7 = replace(V6, identifier="7", knock=True)
V8 = replace(V7, identifier="8", restricted_joins=True)
V9 = replace(V8, identifier="9", redaction_keeps_authorising_user=True)
V10 = replace(V9, identifier="10", knock_restricted=True, integer_power_levels=True)
V11 = replace(V10, identifier="11", redaction_v11=True, implicit_room_creator=True)
V12 = replace(V11, identifier="12", room_id_is_create_hash=True,
              creators_have_infinite_power=True, state_res="v2.1")

ALL_ROOM_VERSIONS = (V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12)
KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {v.identifier: v for v in ALL_ROOM_VERSIONS}
DEFAULT_ROOM_VERSION = "10"


def get_room_version(identifier: object) -> RoomVersion | None:
    """The version named ``identifier``, or None (also for non-strings)."""
    if not isinstance(identifier, str):
        return None
    return KNOWN_ROOM_VERSIONS.get(identifier)


def supports_join_rule(version: RoomVersion, join_rule: object) -> bool:
    """Whether ``version`` has ``join_rule`` (``knock`` v7+, ``restricted`` v8+,
    ``knock_restricted`` v10+; ``public``, ``invite`` and unknown rules are left to the
    auth rules, which treat an unknown rule as closed)."""
    if join_rule == "knock":
        return version.knock
    if join_rule == "restricted":
        return version.restricted_joins
    if join_rule == "knock_restricted":
        return version.knock_restricted
    return True
