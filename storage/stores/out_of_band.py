"""Out-of-band memberships: a local user's invite (or the rejection of one, or a knock)
in a room this server holds no state of (issue 16).

Such an event cannot go through the persister's DAG (its auth events are not held);
it is stored as an outlier with a live stream position, and the user's current
membership row points at it, so /sync shows the invite (or the rejection) and the
user may later join through the inviting server. Should the event later arrive in
the room's graph, the persister promotes this row (storage/stores/events.py).
"""

from __future__ import annotations

import json

from homeserver.crypto.content import PLAIN_CODEC, FieldCodec, event_location
from homeserver.events.model import Event
from storage.database import Database, Txn


def _store(txn: Txn, ev: Event, position: int, codec: FieldCodec) -> bool:
    txn.execute("SELECT 1 FROM events WHERE event_id = ?", (ev.event_id,))
    if txn.fetchone() is not None:
        return False
    stored = codec.seal(json.dumps(ev.pdu, ensure_ascii=False), event_location(ev.event_id))
    txn.execute(
        "INSERT INTO events (event_id, room_id, stream_ordering, depth, type, state_key,"
        " sender, origin_server_ts, json, txn_id, device_id, outlier, rejected_reason,"
        " soft_failed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (ev.event_id, ev.room_id, position, ev.depth, ev.type, ev.state_key, ev.sender,
         ev.origin_server_ts, stored, None, None, True, None, False))
    txn.execute(
        "INSERT INTO room_memberships (event_id, room_id, user_id, sender, membership,"
        " stream_ordering) VALUES (?, ?, ?, ?, ?, ?)",
        (ev.event_id, ev.room_id, ev.state_key, ev.sender, ev.membership, position))
    txn.execute("DELETE FROM local_current_membership WHERE user_id = ? AND room_id = ?",
                (ev.state_key, ev.room_id))
    txn.execute(
        "INSERT INTO local_current_membership (user_id, room_id, membership, event_id,"
        " stream_ordering, forgotten) VALUES (?, ?, ?, ?, ?, ?)",
        (ev.state_key, ev.room_id, ev.membership, ev.event_id, position, False))
    return True


class OutOfBandStore:
    def __init__(self, db: Database, codec: FieldCodec = PLAIN_CODEC) -> None:
        self._db = db
        self.codec = codec  # the events' at-rest codec (EventStore.codec)

    async def store_membership(self, event: Event, position: int) -> bool:
        """Store a member event of a room without state at ``position`` and make it
        its target's current membership; False if the event was stored before."""
        assert event.state_key is not None and event.membership
        return await self._db.run("store_out_of_band_membership", _store, event, position,
                                  self.codec)
