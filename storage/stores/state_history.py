"""What the room looked like at a stream position, or before an event: history
visibility and membership, for the visibility rules (homeserver/handlers/visibility.py)
and pagination. Reads only; the state itself is written by storage/stores/events.py."""

from __future__ import annotations

import json
from collections.abc import Iterable

from homeserver.crypto.at_rest import AtRestError
from homeserver.crypto.content import PLAIN_CODEC, FieldCodec, event_location
from homeserver.events.model import JsonDict
from homeserver.lru import LruCache
from storage.database import Database
from storage.stores.state_reads import (
    VIS_KEY,
    StateGroupCache,
    chunks,
    state_before_for_visibility,
    visibility_segments,
)

#: The keys of a content the visibility rules read. The redaction algorithm keeps both
#: (m.room.history_visibility's and m.room.member's), so what an event id says for them
#: never changes: they are kept in memory without invalidation.
VISIBILITY_KEYS = ("history_visibility", "membership")
#: Event ids whose VISIBILITY_KEYS are kept.
CONTENT_CACHE_SIZE = 50_000


class StateHistoryStore:
    """Cheap answers to "what was X at stream position S" (for linear rooms: stream
    order is graph order there), and to "what was X in the state before event E"
    (any room, from the state groups: per event, or per run of a room's timeline
    for the visibility ranges)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.codec: FieldCodec = PLAIN_CODEC  # as EventStore.codec, set at wiring
        self.state_cache: StateGroupCache | None = None  # EventStore's, set at wiring
        self._vis_contents: LruCache[str, JsonDict] = LruCache(CONTENT_CACHE_SIZE)

    async def state_changes(self, room_id: str, event_type: str, state_key: str | None = None
                            ) -> list[tuple[int, str, str]]:
        """[(stream_ordering, state_key, json)] of every state event of a type, oldest first."""
        if state_key is None:
            rows = await self._db.query(
                "state_changes",
                "SELECT stream_ordering, state_key, json, event_id FROM events WHERE room_id = ?"
                " AND type = ? AND state_key IS NOT NULL ORDER BY stream_ordering",
                room_id, event_type,
            )
        else:
            rows = await self._db.query(
                "state_changes",
                "SELECT stream_ordering, state_key, json, event_id FROM events WHERE room_id = ?"
                " AND type = ? AND state_key = ? ORDER BY stream_ordering",
                room_id, event_type, state_key,
            )
        codec = self.codec
        try:
            return [(int(r[0]), r[1], codec.open(r[2], event_location(r[3]))) for r in rows]
        except AtRestError as e:
            await codec.vault.refused(e)
            raise

    async def visibility_state_before(self, event_ids: Iterable[str], user_id: str
                                      ) -> dict[str, tuple[JsonDict | None, JsonDict | None]]:
        """event id -> (m.room.history_visibility's content, ``user_id``'s m.room.member
        content) in the state before the event (None: not in that state), each as its
        VISIBILITY_KEYS. One database transaction, and one more for the contents not in
        memory; events without state (outliers) are left out."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return {}
        refs = await self._db.run("visibility_state_before", state_before_for_visibility,
                                  ids, user_id, self.state_cache)
        contents = await self._contents(e for pair in refs.values() for e in pair)
        return {eid: (contents.get(v) if v else None, contents.get(m) if m else None)
                for eid, (v, m) in refs.items()}

    async def visibility_segments(self, room_id: str, user_id: str) -> tuple[
            list[tuple[int, JsonDict | None, JsonDict | None]],
            list[tuple[int, JsonDict, JsonDict | None, JsonDict | None]]]:
        """What :meth:`visibility_state_before` says, for the whole timeline of a room
        at once, from the state groups (so right whatever the stream order of remote
        and backfilled events): ([(first position, history visibility content, the
        user's member content)] of each run of events sharing the state before them,
        in stream order; [(position, own content, visibility content and member
        content before it)] of each history-visibility change). None: not in the state."""
        segments, changes = await self._db.run("visibility_segments", visibility_segments,
                                               room_id, user_id)
        contents = await self._contents(
            [*(e for s in segments for e in s[1:]), *(e for c in changes for e in c[1:])])

        def get(eid: str | None) -> JsonDict | None:
            return contents.get(eid) if eid else None

        return ([(p, get(v), get(m)) for p, v, m in segments],
                [(p, contents.get(e, {}), get(v), get(m)) for p, e, v, m in changes])

    async def current_history_visibility(self, room_id: str) -> JsonDict | None:
        """The content of the room's current m.room.history_visibility (None: none)."""
        row = await self._db.query_one(
            "current_history_visibility",
            "SELECT event_id FROM current_state WHERE room_id = ? AND type = ?"
            " AND state_key = ?", room_id, *VIS_KEY)
        if row is None:
            return None
        return (await self._contents([row[0]])).get(row[0])

    async def _contents(self, event_ids: Iterable[str | None]) -> dict[str, JsonDict]:
        """event id -> its content's VISIBILITY_KEYS (opened where sealed at rest)."""
        contents: dict[str, JsonDict] = {}
        wanted = []
        for eid in sorted({e for e in event_ids if e is not None}):
            kept = self._vis_contents.get(eid)
            if kept is None:
                wanted.append(eid)
            else:
                contents[eid] = kept
        raw: dict[str, str] = {}
        for chunk in chunks(wanted):
            for eid, js in await self._db.query(
                    "visibility_state_events",
                    f"SELECT event_id, json FROM events WHERE event_id IN"
                    f" ({','.join('?' for _ in chunk)})", *chunk):
                raw[eid] = js
        codec = self.codec
        try:
            for eid, js in raw.items():
                content = json.loads(codec.open(js, event_location(eid))).get("content")
                kept = {k: content[k] for k in VISIBILITY_KEYS if k in content} \
                    if isinstance(content, dict) else {}
                self._vis_contents.set(eid, kept)
                contents[eid] = kept
        except AtRestError as e:
            await codec.vault.refused(e)
            raise
        return contents

