"""The small, read-only views plugins see instead of Parley's internal classes.

Plugins depend on these types and on :mod:`plugins.hookspecs` only, never on handler,
store or event-model classes: the internals can change without breaking plugins, and
a plugin cannot reach a database handle or a secret through what it is given.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from homeserver.http.errors import MatrixError

_ERRCODE = re.compile(r"^M_[A-Z0-9_]{1,64}\Z")


@dataclass(frozen=True)
class EventView:
    """One room event as a plugin sees it. ``content`` is a private deep copy: a plugin
    changing it changes nothing on the server."""

    event_id: str
    room_id: str
    type: str
    sender: str
    content: dict[str, Any]
    state_key: str | None = None
    origin_server_ts: int = 0

    def is_state(self) -> bool:
        return self.state_key is not None

    @classmethod
    def of(cls, event: Any) -> EventView:
        """From a :class:`homeserver.events.model.Event` (duck-typed: no import)."""
        return cls(event_id=event.event_id, room_id=event.room_id, type=event.type,
                   sender=event.sender, content=copy.deepcopy(dict(event.content)),
                   state_key=event.state_key, origin_server_ts=event.origin_server_ts)


@dataclass(frozen=True)
class RoomView:
    """A room at one point: its id, version and which state it holds (``(type,
    state_key)`` -> event id). Look state content up with ``ModuleApi.get_room_state``."""

    room_id: str
    room_version: str
    state_ids: Mapping[tuple[str, str], str] = field(default_factory=dict)

    @property
    def is_encrypted(self) -> bool:
        return ("m.room.encryption", "") in self.state_ids

    @classmethod
    def of_snapshot(cls, room_id: str, room_version: str,
                    state_ids: Mapping[tuple[str, str], str]) -> RoomView:
        return cls(room_id, room_version, MappingProxyType(dict(state_ids)))


@dataclass(frozen=True)
class UserView:
    """A local account: never its password hash, tokens or devices."""

    user_id: str
    is_admin: bool
    is_guest: bool
    deactivated: bool


class Refusal(MatrixError):
    """What a gating hook returns (or raises) to refuse with a specific answer, e.g.
    ``Refusal(400, "M_FORBIDDEN", "why", {"org.example.policy": "x"})``. Returning
    ``True`` or a reason string refuses with 403 ``M_FORBIDDEN`` instead.

    ``status`` must be 400 or 403, ``errcode`` an ``M_`` code and every ``extra`` key
    namespaced (contain a dot), so a plugin cannot forge other fields of the answer.
    """

    def __init__(self, status: int, errcode: str, message: str,
                 extra: Mapping[str, Any] | None = None) -> None:
        extra = dict(extra or {})
        if status not in (400, 403):
            raise ValueError("a plugin refusal is 400 or 403")
        if not _ERRCODE.match(errcode):
            raise ValueError("errcode must look like M_SOMETHING")
        if any("." not in k for k in extra):
            raise ValueError("extra keys of a refusal must be namespaced (contain a dot)")
        super().__init__(status, message, errcode, **extra)
