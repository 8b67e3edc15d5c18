"""Sliding sync extensions (MSC3884 e2ee, MSC3885 to_device, MSC3959 account_data,
MSC3960 receipts, MSC3961 typing), read from the same ephemeral sources as /sync.

Each extension takes ``lists`` and ``rooms`` (default ``["*"]``): the room-scoped ones
answer for the rooms those lists' windows and subscriptions hold. Rooms the connection
sees for the first time get their current receipts, typing and account data whole;
the others get what changed since the connection's position.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.account_data import AccountDataHandler
from homeserver.handlers.sliding_sync_types import SlidingSyncRequest
from homeserver.handlers.sync import EphemeralSource, SyncHandler, SyncToken
from storage.stores.room_members import MembershipRecord

JsonDict = dict[str, Any]


def extensions_have_data(ext: JsonDict) -> bool:
    """Whether a long-poll should answer now: OTK counts and fallback key types are
    always there, so they do not count (as Synapse)."""
    if (ext.get("to_device") or {}).get("events"):
        return True
    lists = (ext.get("e2ee") or {}).get("device_lists") or {}
    if lists.get("changed") or lists.get("left"):
        return True
    return any(ext.get(k) for k in ("account_data", "receipts", "typing"))


class ExtensionBuilder:
    def __init__(self, sync: SyncHandler, account_data: AccountDataHandler,
                 push_rules: Any = None) -> None:
        self._sync = sync
        self._account_data = account_data
        self._push_rules = push_rules

    def _source(self, name: str) -> EphemeralSource | None:
        return next((s for s in self._sync.sources if s.name == name), None)

    async def build(self, req: SlidingSyncRequest, since: SyncToken | None, now: SyncToken,
                    list_rooms: dict[str, list[str]], subscribed: list[str],
                    initial: set[str], candidates: dict[str, MembershipRecord]) -> JsonDict:
        out: JsonDict = {}
        ext = req.extensions

        def enabled(name: str) -> JsonDict | None:
            cfg = ext.get(name)
            return cfg if isinstance(cfg, dict) and cfg.get("enabled") is True else None

        def rooms_for(cfg: JsonDict, joined_only: bool) -> list[str]:
            lists = cfg.get("lists")
            rooms = cfg.get("rooms")
            lists = ["*"] if lists is None else lists
            rooms = ["*"] if rooms is None else rooms
            picked: dict[str, None] = {}
            for name, ids in list_rooms.items():
                if "*" in lists or name in lists:
                    picked.update(dict.fromkeys(ids))
            picked.update(dict.fromkeys(r for r in subscribed if "*" in rooms or r in rooms))
            return [r for r in picked
                    if not joined_only or candidates[r].membership == "join"]

        if (cfg := enabled("to_device")) is not None:
            out["to_device"] = await self._to_device(req, cfg, now)
        if enabled("e2ee") is not None:
            out["e2ee"] = await self._e2ee(req, since, now)
        if (cfg := enabled("account_data")) is not None:
            section = await self._room_account_data(req, since, rooms_for(cfg, False), initial)
            if section["global"] or section["rooms"]:
                out["account_data"] = section
        for name, stream in (("receipts", "receipts"), ("typing", "typing")):
            if (cfg := enabled(name)) is not None:
                rooms = await self._ephemeral(req, stream, since, now, rooms_for(cfg, True),
                                              initial)
                if rooms:
                    out[name] = {"rooms": rooms}
        return out

    async def _to_device(self, req: SlidingSyncRequest, cfg: JsonDict, now: SyncToken
                         ) -> JsonDict:
        """Messages after the client's ``since`` (its last ``next_batch``); ``since``
        acknowledges, and so deletes, what came before, as on /sync."""
        upto = now.position("to_device")
        src = self._source("to_device")
        raw = cfg.get("since")
        since = min(int(raw), upto) if isinstance(raw, str) and raw.isdigit() else 0
        events: list[JsonDict] = []
        if src is not None and req.device_id is not None:
            section = await src.global_section(req.user_id, req.device_id, since, upto)
            events = (section.get("to_device") or {}).get("events") or []
        return {"next_batch": str(upto), "events": events}

    async def _e2ee(self, req: SlidingSyncRequest, since: SyncToken | None, now: SyncToken
                    ) -> JsonDict:
        src = self._source("device_lists")
        section: JsonDict = {}
        if src is not None:
            section = await src.global_section(
                req.user_id, req.device_id, since.position("device_lists") if since else 0,
                now.position("device_lists"))
        out: JsonDict = {
            "device_one_time_keys_count": section.get("device_one_time_keys_count", {}),
            "device_unused_fallback_key_types":
                section.get("device_unused_fallback_key_types", []),
        }
        if since is not None:
            out["device_lists"] = section.get("device_lists") or {"changed": [], "left": []}
        return out

    async def _room_account_data(self, req: SlidingSyncRequest, since: SyncToken | None,
                                 rooms: list[str], initial: set[str]) -> JsonDict:
        since_ad = since.account_data if since is not None else 0
        glob, by_room = await self._account_data.get_updated_account_data(req.user_id,
                                                                         since_ad)
        global_events = [{"type": t, "content": c} for t, c in glob.items()]
        if self._push_rules is not None and (
                since is None or await self._push_rules.get_stream_id(req.user_id) > since_ad):
            global_events.append({"type": "m.push_rules", "content":
                                  await self._push_rules.get_push_rules_json(req.user_id)})
        if since_ad and any(r in initial for r in rooms):
            _, whole = await self._account_data.get_updated_account_data(req.user_id, 0)
            for room_id in rooms:
                if room_id in initial and room_id in whole:
                    by_room[room_id] = whole[room_id]
        return {"global": global_events, "rooms": {
            room_id: [{"type": t, "content": c} for t, c in by_room[room_id].items()]
            for room_id in rooms if by_room.get(room_id)}}

    async def _ephemeral(self, req: SlidingSyncRequest, stream: str, since: SyncToken | None,
                         now: SyncToken, rooms: list[str], initial: set[str]) -> JsonDict:
        """``{room_id: event}`` from the receipts or typing source."""
        src = self._source(stream)
        if src is None or not rooms:
            return {}
        upto = now.position(stream)
        per_room: dict[str, list[JsonDict]] = {}
        known = [r for r in rooms if since is not None and r not in initial]
        fresh = [r for r in rooms if since is None or r in initial]
        if known and since is not None:
            per_room.update(await src.room_events(req.user_id, known, since.position(stream),
                                                  upto))
        if fresh:
            per_room.update(await src.room_events(req.user_id, fresh, 0, upto))
        return {room_id: evs[-1] for room_id, evs in per_room.items() if evs}
