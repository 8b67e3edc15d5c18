"""Events as clients see them, with redactions applied, for many events at once.

Why a batch helper: every history read path (/messages, /context, /members) must serve
redacted events pruned with ``unsigned.redacted_because``, and must not leak redacted
content through another event's ``unsigned.prev_content`` (state events carry the
content of the event they replaced, copied when they were created). Doing both with
two queries per page instead of per event keeps pagination cheap.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from homeserver.clock import Clock
from homeserver.events.client_format import serialize_event
from homeserver.events.model import Event
from homeserver.events.redaction import prune_event_dict
from storage.stores.events import EventStore

JsonDict = dict[str, Any]


class ClientEventSerializer:
    def __init__(self, clock: Clock, events: EventStore,
                 aggregations: Callable[[str, str | None, Sequence[Event], bool],
                                        Awaitable[dict[str, dict[str, Any]]]] | None = None,
                 ) -> None:
        self._clock = clock
        self._events = events
        # Bundled aggregations (as RoomReadHandler.aggregations):
        # (user, device, events, include_room_id) -> {event_id: unsigned["m.relations"]}.
        self.aggregations = aggregations

    async def _applied_redactions(self, events: Sequence[Event]) -> dict[str, Event]:
        """event id -> the redaction event that applies to it. A redaction only counts
        in its own room: one pointing at another room's event is ignored."""
        by_id = {e.event_id: e for e in events}
        redaction_ids = await self._events.get_redaction_ids(by_id)
        found = await self._events.get_events(redaction_ids.values())
        out = {}
        for target, rid in redaction_ids.items():
            redaction = found.get(rid)
            if redaction is not None and redaction.room_id == by_id[target].room_id:
                out[target] = redaction
        return out

    async def serialize(self, events: Sequence[Event], user_id: str, device_id: str | None,
                        include_room_id: bool = True) -> list[JsonDict]:
        if not events:
            return []
        redactions = await self._applied_redactions(events)
        # prev_content of state events whose predecessor was redacted since.
        replaced: dict[str, str] = {}
        for e in events:
            unsigned = e.pdu.get("unsigned")
            if isinstance(unsigned, dict) and isinstance(unsigned.get("replaces_state"), str):
                replaced[e.event_id] = unsigned["replaces_state"]
        replaced_events = await self._events.get_events(replaced.values()) if replaced else {}
        replaced_redactions = (await self._applied_redactions(list(replaced_events.values()))
                               if replaced_events else {})
        bundles: dict[str, dict[str, Any]] = {}
        if self.aggregations is not None:
            unredacted = [e for e in events if e.event_id not in redactions]
            if unredacted:
                bundles = await self.aggregations(user_id, device_id, unredacted,
                                                  include_room_id)
        now = self._clock.time_msec()
        out = []
        for e in events:
            redaction = redactions.get(e.event_id)
            pruned = prune_event_dict(e.pdu, e.room_version) if redaction is not None else None
            client = serialize_event(e, now, for_user=user_id, for_device=device_id,
                                     redaction=redaction, pruned_pdu=pruned,
                                     include_room_id=include_room_id,
                                     relations=bundles.get(e.event_id))
            unsigned = client.get("unsigned", {})
            if redaction is not None:
                # Nothing of a redacted event's history either (as Synapse prunes unsigned).
                unsigned.pop("prev_content", None)
                unsigned.pop("prev_sender", None)
            else:
                prev_id = replaced.get(e.event_id)
                prev = replaced_events.get(prev_id) if prev_id else None
                if prev is not None and prev.event_id in replaced_redactions and \
                        "prev_content" in unsigned:
                    unsigned["prev_content"] = prune_event_dict(
                        prev.pdu, prev.room_version)["content"]
            out.append(client)
        return out
