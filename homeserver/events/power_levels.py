"""Power levels as the authorization rules see them (room versions 10, 11 and 12).

Pure functions over a state map ``{(type, state_key): Event}``. They encode the spec's
defaults, which differ depending on whether an ``m.room.power_levels`` event exists at
all, and the v12 rule that room creators have infinitely high power.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import RoomVersion

CREATE = "m.room.create"
POWER_LEVELS = "m.room.power_levels"
MEMBER = "m.room.member"

# The levels named in rule "power levels 1" (v10+: must be integers when present).
NAMED_LEVEL_KEYS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")

# Client-Server spec, m.room.power_levels: the defaults when a key is absent.
_NAMED_DEFAULTS: dict[str, int] = {
    "ban": 50, "kick": 50, "redact": 50, "invite": 0,
    "users_default": 0, "events_default": 0, "state_default": 50,
}
# "If the room contains no m.room.power_levels event, the room's creator has a power level
# of 100, and all other users have a power level of 0" (v10/11; v12 creators are infinite).
NO_POWER_LEVELS_CREATOR_LEVEL = 100

_SERVER_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(:[0-9]{1,5})?$")

Level = int | float  # float only ever for math.inf (v12 creators)


def is_strict_int(value: Any) -> bool:
    """JSON integers only: ``bool`` is an ``int`` subclass in Python but not in JSON."""
    return type(value) is int


# "a single base 10 integer ... optionally with any number of leading zeroes; optionally
# prefixed with a single - or +; optionally with leading or trailing whitespace".
_INT_STRING = re.compile(r"\s*[+-]?[0-9]+\s*")
_MAX_INT_STRING = 256  # far beyond any meaningful level; keeps int() cheap


def parse_level(value: Any) -> int | None:
    """A power level value as an integer, or None when it is not one in any room
    version: an int; a string that is an integer (v1-v9); a finite float, truncated
    (v1-v5). Booleans are not numbers."""
    if is_strict_int(value):
        return int(value)
    if isinstance(value, str):
        if len(value) > _MAX_INT_STRING or not _INT_STRING.fullmatch(value):
            return None
        return int(value.strip())
    if isinstance(value, float) and math.isfinite(value):
        return int(value)  # truncates towards zero, as the spec's "truncated" example
    return None


def is_valid_level(value: Any, version: RoomVersion) -> bool:
    """Whether ``value`` is a power level in ``version``: integers always, integer
    strings in v1-v9, floats in v1-v5 (rooms without strict canonical JSON)."""
    if is_strict_int(value):
        return True
    if version.integer_power_levels:
        return False
    if isinstance(value, str):
        return parse_level(value) is not None
    if isinstance(value, float):
        return not version.strict_canonical_json and parse_level(value) is not None
    return False


def is_valid_user_id(value: Any) -> bool:
    """The user id checks the auth rules rely on (power level ``users`` keys, v12
    ``additional_creators``): ``@localpart:server`` with a non-empty localpart and a
    plausible server name, at most 255 bytes. Historical localparts are accepted, since
    remote rooms can legitimately contain them."""
    if not isinstance(value, str) or not value.startswith("@") or len(value.encode()) > 255:
        return False
    local, sep, server = value[1:].partition(":")
    return bool(local) and bool(sep) and _SERVER_NAME.match(server) is not None


def domain_of(identifier: str) -> str:
    """The server part of a user id or ``!opaque:server`` room id (``""`` if none)."""
    return identifier.partition(":")[2]


def get_creators(create_event: Event) -> frozenset[str]:
    """The room creators: v10 the ``creator`` content field, v11 the create sender,
    v12 the create sender plus ``additional_creators``."""
    version = create_event.room_version
    if not version.implicit_room_creator:
        creator = create_event.content.get("creator")
        return frozenset({creator}) if isinstance(creator, str) else frozenset()
    creators = {create_event.sender}
    if version.creators_have_infinite_power:
        extra = create_event.content.get("additional_creators")
        if isinstance(extra, list):
            creators.update(u for u in extra if isinstance(u, str))
    return frozenset(creators)


def power_levels_content(auth_state: Mapping[StateKey, Event]) -> Mapping[str, Any] | None:
    """The content of the current power levels event, or None when the room has none
    (the distinction matters: several defaults differ)."""
    event = auth_state.get((POWER_LEVELS, ""))
    return event.content if event is not None else None


def _level(value: Any, default: int) -> int:
    # What the room version allows was checked by the auth rules; a value that is no
    # level at all (v1-v9 only validate ``users``) falls back to the default.
    parsed = parse_level(value)
    return default if parsed is None else parsed


def get_user_power_level(user_id: str, auth_state: Mapping[StateKey, Event], create_event: Event) -> Level:
    """A user's power level: ``math.inf`` for v12 creators, else the ``users`` entry or
    ``users_default``; with no power levels event, 100 for the v10/11 creator, else 0."""
    creators = get_creators(create_event)
    if create_event.room_version.creators_have_infinite_power and user_id in creators:
        return math.inf
    content = power_levels_content(auth_state)
    if content is None:
        if not create_event.room_version.creators_have_infinite_power and user_id in creators:
            return NO_POWER_LEVELS_CREATOR_LEVEL
        return 0
    default = _level(content.get("users_default"), 0)
    users = content.get("users")
    if isinstance(users, Mapping) and user_id in users:
        return _level(users[user_id], default)
    return default


def get_named_level(name: str, auth_state: Mapping[StateKey, Event]) -> int:
    """``ban``/``kick``/``redact``/``invite`` (or another named key) with the spec
    defaults: 50 for ban, kick and redact, 0 for invite, whether or not a power levels
    event exists."""
    content = power_levels_content(auth_state) or {}
    return _level(content.get(name), _NAMED_DEFAULTS.get(name, 0))


def get_required_level(event_type: str, is_state: bool, power_levels: Mapping[str, Any] | None) -> int:
    """The *required power level* for an event type: ``events[type]``, else
    ``state_default`` (50) / ``events_default`` (0). With no power levels event at all
    (``power_levels`` None) every event needs 0: ``state_default`` is 0 in that case."""
    if power_levels is None:
        return 0
    events = power_levels.get("events")
    if isinstance(events, Mapping) and event_type in events:
        level = parse_level(events[event_type])
        if level is not None:
            return level
    if is_state:
        return _level(power_levels.get("state_default"), _NAMED_DEFAULTS["state_default"])
    return _level(power_levels.get("events_default"), _NAMED_DEFAULTS["events_default"])
