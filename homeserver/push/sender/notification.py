"""The body POSTed to a push gateway (``/_matrix/push/v1/notify``), as Synapse builds it.

Full format: ``id`` (deprecated, SyTest still requires it), ``event_id``, ``room_id``,
``type``, ``sender``, ``prio``, ``counts.unread`` (the badge), ``membership`` and
``user_is_target`` for member events, ``content`` (``push.include_content``),
``sender_display_name``, ``room_name`` (the room's name, else its canonical alias,
else its members, as Synapse's ``calculate_room_name`` without single-member names)
and ``room_alias`` (the canonical alias), all from the room's state at the event. A
pusher whose ``data.format`` is ``event_id_only`` gets only ``event_id``, ``room_id``,
``prio`` and ``counts``: the gateway fetches the rest with the user's credentials, so nothing readable leaves.

``prio`` is ``high`` when the event may make a sound or highlight (a ``sound`` or
``highlight`` tweak, or encrypted, since its effect is unknown), else ``low``.
``devices`` carries the pusher: ``app_id``, ``pushkey``, ``pushkey_ts`` (seconds),
``data`` (the pusher's data minus ``url``, as the spec says) and ``tweaks``.

The badge (``counts.unread``) is the number of rooms with unread notifications
(``push.group_unread_count_by_room``, Synapse's default) or of unread notifications,
plus pending invites.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.events.model import Event, StateKey
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.push.sender.config import PushConfig
from storage.stores.events import EventStore
from storage.stores.pushers import Pusher
from storage.stores.room_members import RoomMemberStore

JsonDict = dict[str, Any]
UnreadCounts = Callable[[str, list[str], bool], Awaitable[dict[str, JsonDict]]]

_ALIAS = re.compile(r"^#.*:.+$")
ALL_ALONE = "Empty Room"
# Above this many member events a room without a name or alias is left unnamed in
# pushes rather than loading every member for each notification.
MAX_MEMBERS_FOR_NAME = 200


def tweaks_for_actions(actions: list[Any]) -> JsonDict:
    """The ``set_tweak`` actions as a dict (a tweak without ``value`` is true)."""
    tweaks: JsonDict = {}
    for action in actions:
        if isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
            tweaks[action["set_tweak"]] = action.get("value", True)
    return tweaks


def priority(event_type: str, tweaks: JsonDict) -> str:
    if event_type == "m.room.encrypted" or tweaks.get("highlight") or tweaks.get("sound"):
        return "high"
    return "low"


def device_entry(pusher: Pusher, tweaks: JsonDict) -> JsonDict:
    return {
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.created_ts // 1000,
        "data": {k: v for k, v in pusher.data.items() if k != "url"},
        "tweaks": tweaks,
    }


def name_from_member(event: Event) -> str:
    name = event.content.get("displayname")
    return name if isinstance(name, str) and name else (event.state_key or "")


def describe_members(others: list[Event]) -> str:
    if len(others) == 1:
        return name_from_member(others[0])
    if len(others) == 2:
        return f"{name_from_member(others[0])} and {name_from_member(others[1])}"
    return f"{name_from_member(others[0])} and {len(others) - 1} others"


class NotificationBuilder:
    def __init__(self, config: PushConfig, creation: EventCreationHandler, events: EventStore,
                 members: RoomMemberStore, unread_counts: UnreadCounts) -> None:
        self._config = config
        self._events = events
        self._creation = creation
        self._members = members
        self._unread_counts = unread_counts

    async def badge(self, user_id: str) -> int:
        invites = await self._members.rooms_for_user(user_id, ("invite",))
        joined = [m.room_id for m in await self._members.rooms_for_user(user_id)]
        counts = await self._unread_counts(user_id, joined, False)
        badge = len(invites)
        for entry in counts.values():
            notify = int(entry["unread_notifications"]["notification_count"])
            if notify:
                badge += 1 if self._config.group_unread_count_by_room else notify
        return badge

    async def for_event(self, pusher: Pusher, event: Event, actions: list[Any],
                        badge: int) -> JsonDict:
        tweaks = tweaks_for_actions(actions)
        prio = priority(event.type, tweaks)
        if pusher.data.get("format") == "event_id_only":
            return {"notification": {
                "event_id": event.event_id, "room_id": event.room_id, "prio": prio,
                "counts": {"unread": badge}, "devices": [device_entry(pusher, {})],
            }}
        note: JsonDict = {
            "id": event.event_id, "event_id": event.event_id, "room_id": event.room_id,
            "type": event.type, "sender": event.sender, "prio": prio,
            "counts": {"unread": badge},
        }
        if event.type == "m.room.member" and event.is_state():
            note["membership"] = event.content.get("membership")
            note["user_is_target"] = event.state_key == pusher.user_id
        if self._config.include_content and event.content:
            note["content"] = event.content
        note.update(await self.room_context(event, pusher.user_id))
        note["devices"] = [device_entry(pusher, tweaks)]
        return {"notification": note}

    @staticmethod
    def badge_only(pusher: Pusher, badge: int) -> JsonDict:
        """What Synapse sends when the user reads: the new badge, no event."""
        device = device_entry(pusher, {})
        del device["tweaks"]
        return {"notification": {"id": "", "type": None, "sender": "",
                                 "counts": {"unread": badge}, "devices": [device]}}

    async def _state_at(self, event: Event) -> dict[StateKey, str]:
        """The room's state ids after ``event`` (its current state if unknown)."""
        group = await self._events.get_state_group_for_event(event.event_id)
        if group is not None:
            return await self._events.get_state_for_group(group)
        return dict((await self._creation.snapshot(event.room_id)).state_ids)

    async def room_context(self, event: Event, user_id: str) -> JsonDict:
        """``sender_display_name``, ``room_name`` and ``room_alias`` (when known), from
        the room's state at the event, as Synapse."""
        state_ids = await self._state_at(event)
        keys: list[StateKey] = [("m.room.name", ""), ("m.room.canonical_alias", ""),
                                ("m.room.member", event.sender), ("m.room.member", user_id)]
        found = await self._events.get_events(state_ids[k] for k in keys if k in state_ids)
        state = {k: found[state_ids[k]] for k in keys if state_ids.get(k) in found}
        out: JsonDict = {}
        sender = state.get(("m.room.member", event.sender))
        if sender is not None and name_from_member(sender):
            out["sender_display_name"] = name_from_member(sender)
        alias_ev = state.get(("m.room.canonical_alias", ""))
        alias = alias_ev.content.get("alias") if alias_ev is not None else None
        if isinstance(alias, str) and _ALIAS.match(alias):
            out["room_alias"] = alias
        else:
            alias = None
        name_ev = state.get(("m.room.name", ""))
        name = name_ev.content.get("name") if name_ev is not None else None
        if isinstance(name, str) and name:
            out["room_name"] = name
        elif alias:
            out["room_name"] = alias
        else:
            mine = state.get(("m.room.member", user_id))
            if mine is None or mine.membership != "invite":
                member_name = await self._name_from_members(state_ids, user_id)
                if member_name:
                    out["room_name"] = member_name
        return out

    async def _name_from_members(self, state_ids: dict[StateKey, str], user_id: str
                                 ) -> str | None:
        """Synapse's member-based room name, None for a room with one other member
        (the gateway shows the sender's name then)."""
        member_ids = [eid for k, eid in state_ids.items() if k[0] == "m.room.member"]
        if len(member_ids) > MAX_MEMBERS_FOR_NAME:
            return None
        found = await self._events.get_events(member_ids)
        everyone = sorted((e for e in found.values() if e.membership in ("join", "invite")),
                          key=lambda e: (e.origin_server_ts, e.internal.stream_ordering or 0))
        others = [e for e in everyone if e.state_key != user_id]
        if not others:
            if len(everyone) == 1 and everyone[0].sender != user_id:
                return name_from_member(everyone[0])
            return ALL_ALONE
        if len(others) == 1:
            return None
        return describe_members(others)
