"""POST /search (room events only). Off by default (``search: {enabled: false}``): the
body is still validated, and the answer is an empty result."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.search import SearchHandler
from homeserver.http.params import json_int
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

_STRINGS = {"type": "array", "items": {"type": "string"}, "maxItems": 1000}
ROOM_EVENT_FILTER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "limit": json_int(),
        "types": _STRINGS, "not_types": _STRINGS,
        "senders": {**_STRINGS, "items": {"type": "string", "pattern": "^@"}},
        "not_senders": {**_STRINGS, "items": {"type": "string", "pattern": "^@"}},
        "rooms": {**_STRINGS, "items": {"type": "string", "pattern": "^!"}},
        "not_rooms": {**_STRINGS, "items": {"type": "string", "pattern": "^!"}},
        "contains_url": {"type": "boolean"},
        "lazy_load_members": {"type": "boolean"},
        "include_redundant_members": {"type": "boolean"},
        "unread_thread_notifications": {"type": "boolean"},
    },
}
SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["search_categories"],
    "properties": {
        "search_categories": {
            "type": "object",
            "properties": {
                "room_events": {
                    "type": "object",
                    "required": ["search_term"],
                    "properties": {
                        "search_term": {"type": "string", "maxLength": 1000},
                        "keys": {"type": "array", "items": {
                            "enum": ["content.body", "content.name", "content.topic"]}},
                        "filter": ROOM_EVENT_FILTER,
                        "order_by": {"enum": ["recent", "rank"]},
                        "event_context": {
                            "type": "object",
                            "properties": {
                                "before_limit": json_int(),
                                "after_limit": json_int(),
                                "include_profile": {"type": "boolean"},
                            },
                        },
                        "include_state": {"type": "boolean"},
                        "groupings": {
                            "type": "object",
                            "properties": {"group_by": {"type": "array", "items": {
                                "type": "object",
                                "properties": {"key": {"enum": ["room_id", "sender"]}},
                            }}},
                        },
                    },
                },
            },
        },
    },
}


class SearchServlets:
    def __init__(self, search: SearchHandler) -> None:
        self._search = search

    def register(self, router: Router) -> None:
        router.add("POST", client_paths("/search"), self.on_search, body_schema=SEARCH_SCHEMA)

    async def on_search(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._search.search(r.user_id, r.device_id, req.body,
                                              req.query("next_batch"))
