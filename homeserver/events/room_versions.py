"""The room versions Parley supports and the rule switches that differ between them.

Only versions 10, 11 and 12 are supported; older ones are refused with
``M_UNSUPPORTED_ROOM_VERSION`` on room creation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoomVersion:
    identifier: str
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
    # Join rules available (all of 10-12 have knock, restricted and knock_restricted).
    knock: bool = True
    restricted_joins: bool = True
    knock_restricted: bool = True
    # v10+: power level values must be integers, not strings.
    integer_power_levels: bool = True
    # The state resolution algorithm ("v2" for 10/11, "v2.1" for 12).
    state_res: str = "v2"


V10 = RoomVersion("10", redaction_v11=False, implicit_room_creator=False,
                  room_id_is_create_hash=False, creators_have_infinite_power=False)
V11 = RoomVersion("11", redaction_v11=True, implicit_room_creator=True,
                  room_id_is_create_hash=False, creators_have_infinite_power=False)
V12 = RoomVersion("12", redaction_v11=True, implicit_room_creator=True,
                  room_id_is_create_hash=True, creators_have_infinite_power=True,
                  state_res="v2.1")

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {v.identifier: v for v in (V10, V11, V12)}
DEFAULT_ROOM_VERSION = "10"


def get_room_version(identifier: str) -> RoomVersion | None:
    return KNOWN_ROOM_VERSIONS.get(identifier)
