"""Account data: per-user JSON objects, global or per room, that only their owner sees.

Clients set and read them here; /sync later delivers what changed since a position
of the ``account_data`` stream. Types the server manages itself (read markers, push
rules) cannot be written through the client endpoints, only by the server's own code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from homeserver.http.errors import Codes, MatrixError, bad_json, forbidden, not_found
from storage.stores.account_data import AccountDataStore

JsonDict = dict[str, Any]

# Written only by the server (/read_markers, /pushrules); the spec answers 405 M_BAD_JSON.
SERVER_MANAGED_TYPES = frozenset({"m.fully_read", "m.push_rules"})
MAX_TYPE_LENGTH = 255  # bytes, like event types
MAX_ROOM_ID_LENGTH = 255
MAX_JSON_DEPTH = 100  # far beyond real account data; keeps encoders off the recursion limit


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in item)
    return deepest


def to_json_text(value: Any) -> str:
    """Compact, key-sorted JSON text for storage; 400 M_BAD_JSON if the value cannot
    round-trip as standard UTF-8 JSON (an overflowing number, a lone surrogate) or
    is nested deeper than :data:`MAX_JSON_DEPTH`."""
    if json_depth(value) > MAX_JSON_DEPTH:
        raise bad_json("Content is nested too deeply")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=True,
                          separators=(",", ":"))
        text.encode("utf-8")
    except (ValueError, UnicodeEncodeError, RecursionError) as e:
        raise bad_json("Content is not representable as JSON") from e
    return text


def is_valid_room_id(room_id: str) -> bool:
    """``!opaque:server`` (room versions 1-11) or ``!opaque`` (room version 12+)."""
    if not room_id.startswith("!") or len(room_id.encode("utf-8")) > MAX_ROOM_ID_LENGTH:
        return False
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in room_id):
        return False
    opaque, sep, server = room_id[1:].partition(":")
    return bool(opaque) and (not sep or bool(server))


def _check_type(data_type: str) -> None:
    if len(data_type.encode("utf-8")) > MAX_TYPE_LENGTH or any(ord(c) < 0x20 for c in data_type):
        raise MatrixError(400, "Invalid account data type", Codes.INVALID_PARAM)


class AccountDataHandler:
    def __init__(self, store: AccountDataStore, push_rules: Any = None) -> None:
        self._store = store
        # Told (position, user_id) after every write, e.g. to wake that user's /sync.
        self.on_change: list[Callable[[int, str], None]] = []
        # The push rules handler, which serves m.push_rules.
        self.push_rules = push_rules

    def _check_request(self, requester_id: str, user_id: str, room_id: str | None,
                       data_type: str) -> None:
        if requester_id != user_id:
            raise forbidden("Cannot access account data for other users")
        if room_id is not None and not is_valid_room_id(room_id):
            raise MatrixError(400, "Invalid room ID", Codes.INVALID_PARAM)
        _check_type(data_type)

    async def set_from_client(
        self, requester_id: str, user_id: str, room_id: str | None, data_type: str,
        content: JsonDict,
    ) -> int:
        """A client write: the owner only, and never a server-managed type."""
        self._check_request(requester_id, user_id, room_id, data_type)
        if data_type in SERVER_MANAGED_TYPES:
            raise MatrixError(405, f"Cannot set {data_type} through this API", Codes.BAD_JSON)
        return await self.set_account_data(user_id, room_id, data_type, content)

    async def get_from_client(
        self, requester_id: str, user_id: str, room_id: str | None, data_type: str
    ) -> JsonDict:
        self._check_request(requester_id, user_id, room_id, data_type)
        if data_type == "m.push_rules" and room_id is None and self.push_rules is not None:
            return await self.push_rules.get_push_rules_json(user_id)
        content = await self._store.get_account_data(user_id, room_id, data_type)
        if content is None:
            raise not_found("Account data not found")
        return content

    async def set_account_data(
        self, user_id: str, room_id: str | None, data_type: str, content: JsonDict
    ) -> int:
        """Any write, server-managed types included; returns its stream position."""
        position = await self._store.set_account_data(user_id, room_id, data_type,
                                                       to_json_text(content))
        for listener in self.on_change:
            listener(position, user_id)
        return position

    async def get_updated_account_data(
        self, user_id: str, since_stream_id: int
    ) -> tuple[JsonDict, dict[str, JsonDict]]:
        """What changed after ``since_stream_id``: (global by type, {room_id: by type})."""
        return await self._store.get_updated_account_data(user_id, since_stream_id)
