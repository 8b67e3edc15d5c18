"""Applying a sync filter (spec "Filtering") to events and rooms."""

from __future__ import annotations

import fnmatch
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from homeserver.events.model import Event
from homeserver.push.evaluator import split_key  # the spec's dot-separated paths

JsonDict = dict[str, Any]

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 100

# Parsed filters are shared between requests (every parked long-poll holds one, and most
# clients send the same few): a bounded LRU keyed by the filter's canonical JSON. The
# filters are frozen so sharing is safe. Keys longer than this are parsed, not cached.
_CACHE_SIZE = 1024
_CACHE_MAX_KEY = 8192


def _matches(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The spec's EventFilter / RoomEventFilter (the parts that apply to events)."""

    types: list[str] | None = None
    not_types: list[str] = field(default_factory=list)
    senders: list[str] | None = None
    not_senders: list[str] = field(default_factory=list)
    limit: int | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    contains_url: bool | None = None
    unread_thread_notifications: bool = False  # per-thread counts in /sync (timeline filter)

    @classmethod
    def parse(cls, raw: Any) -> EventFilter:
        raw = raw if isinstance(raw, dict) else {}
        limit = raw.get("limit")
        return cls(
            types=raw.get("types"),
            not_types=list(raw.get("not_types", [])),
            senders=raw.get("senders"),
            not_senders=list(raw.get("not_senders", [])),
            limit=limit if isinstance(limit, int) and limit >= 0 else None,
            lazy_load_members=bool(raw.get("lazy_load_members", False)),
            include_redundant_members=bool(raw.get("include_redundant_members", False)),
            contains_url=raw.get("contains_url"),
            unread_thread_notifications=raw.get("unread_thread_notifications") is True,
        )

    def allows_type(self, event_type: str) -> bool:
        if _matches(event_type, self.not_types):
            return False
        return self.types is None or _matches(event_type, self.types)

    def allows(self, event: Event) -> bool:
        if not self.allows_type(event.type):
            return False
        if event.sender in self.not_senders:
            return False
        if self.senders is not None and event.sender not in self.senders:
            return False
        if self.contains_url is not None:
            has_url = isinstance(event.content.get("url"), str)
            if has_url != self.contains_url:
                return False
        return True

    def filter(self, events: list[Event]) -> list[Event]:
        return [e for e in events if self.allows(e)]


@dataclass(frozen=True, slots=True)
class SyncFilter:
    timeline: EventFilter
    state: EventFilter
    ephemeral: EventFilter
    room_account_data: EventFilter
    account_data: EventFilter
    presence: EventFilter
    rooms: list[str] | None
    not_rooms: list[str]
    include_leave: bool
    event_fields: list[str] | None

    @classmethod
    def parse(cls, raw: Any) -> SyncFilter:
        """The parsed filter, shared with earlier requests that sent the same JSON."""
        raw = raw if isinstance(raw, dict) else {}
        try:
            key = json.dumps(raw, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            return cls._parse(raw)
        if len(key) > _CACHE_MAX_KEY:
            return cls._parse(raw)
        found = _PARSED.get(key)
        if found is not None:
            _PARSED.move_to_end(key)
            return found
        parsed = cls._parse(raw)
        _PARSED[key] = parsed
        if len(_PARSED) > _CACHE_SIZE:
            _PARSED.popitem(last=False)
        return parsed

    @classmethod
    def _parse(cls, raw: JsonDict) -> SyncFilter:
        room = raw.get("room") if isinstance(raw.get("room"), dict) else {}
        return cls(
            timeline=EventFilter.parse(room.get("timeline")),
            state=EventFilter.parse(room.get("state")),
            ephemeral=EventFilter.parse(room.get("ephemeral")),
            room_account_data=EventFilter.parse(room.get("account_data")),
            account_data=EventFilter.parse(raw.get("account_data")),
            presence=EventFilter.parse(raw.get("presence")),
            rooms=room.get("rooms"),
            not_rooms=list(room.get("not_rooms", [])),
            include_leave=bool(room.get("include_leave", False)),
            event_fields=raw.get("event_fields"),
        )

    def project(self, events: list[JsonDict]) -> list[JsonDict]:
        """``events`` cut down to the filter's ``event_fields`` (all of each without
        them). Only new dicts are made: what the events share is never changed."""
        paths = _field_paths(self.event_fields)
        return events if paths is None else [_only_fields(e, paths) for e in events]

    def allows_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    @property
    def timeline_limit(self) -> int:
        limit = self.timeline.limit
        if limit is None:
            return DEFAULT_TIMELINE_LIMIT
        return min(limit, MAX_TIMELINE_LIMIT)


def _field_paths(fields: Any) -> list[tuple[str, ...]] | None:
    """The filter's ``event_fields`` as paths, shortest first (None: keep every field;
    the filter schema has made it a list of strings)."""
    if not isinstance(fields, list):
        return None
    return sorted({tuple(split_key(f)) for f in fields if isinstance(f, str)}, key=len)


def _only_fields(event: JsonDict, paths: list[tuple[str, ...]]) -> JsonDict:
    out: JsonDict = {}
    whole: set[tuple[str, ...]] = set()
    for path in paths:
        if any(path[:n] in whole for n in range(1, len(path))):
            continue  # an enclosing object is already there whole
        src: Any = event
        for key in path:
            src = src.get(key) if isinstance(src, dict) else None
            if src is None:
                break
        if src is None:
            continue
        dst = out
        for key in path[:-1]:
            dst = dst.setdefault(key, {})
        dst[path[-1]] = src
        whole.add(path)
    return out


_PARSED: OrderedDict[str, SyncFilter] = OrderedDict()
