"""The federation sender's persistent queue and the inbound transaction log (schema 0043).

Per destination: queued PDUs (by stream ordering) and EDUs (by a sequence number, an
optional coalescing key replacing an older EDU of the same key), the one transaction
in flight (its exact body, so a crash resends the same id and content), the backoff
timings, and the latest event queued per room. Inbound: the answers given to each
(origin, txn id), so a retried transaction gets the same answer.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class Destination:
    destination: str
    failure_ts: int | None
    retry_last_ts: int
    retry_interval: int
    last_successful_stream_ordering: int | None
    last_success_ts: int | None = None


@dataclass(frozen=True)
class QueuedPdu:
    stream_ordering: int
    room_id: str
    event_id: str


@dataclass(frozen=True)
class QueuedEdu:
    seq: int
    edu_type: str
    content: JsonDict


@dataclass(frozen=True)
class InFlight:
    """A transaction created for a destination and not yet acknowledged."""

    destination: str
    txn_id: str
    body: JsonDict
    up_to: int
    pdu_count: int
    edu_count: int


@dataclass(frozen=True)
class EduRow:
    destination: str
    edu_type: str
    coalesce_key: str | None
    content: JsonDict


_DEST_COLS = ("destination, failure_ts, retry_last_ts, retry_interval,"
              " last_successful_stream_ordering, last_success_ts")
ORDER_COLUMNS = ("destination", "retry_last_ts", "retry_interval", "failure_ts",
                 "last_successful_stream_ordering")


def _dest(r: Sequence[Any]) -> Destination:
    return Destination(str(r[0]), None if r[1] is None else int(r[1]), int(r[2]), int(r[3]),
                       None if r[4] is None else int(r[4]),
                       None if r[5] is None else int(r[5]))


def _ensure(txn: Txn, destination: str) -> None:
    txn.execute("INSERT INTO federation_destinations (destination) VALUES (?)"
                " ON CONFLICT (destination) DO NOTHING", (destination,))


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


class FederationQueueStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._seq: itertools.count[int] | None = None
        # In-process notification that a destination's backoff was cleared (the admin
        # API's reset_connection): the running federation sender retries it at once.
        self.on_retry_reset: list[Callable[[str], None]] = []

    async def _next_seqs(self, n: int) -> list[int]:
        if self._seq is None:
            row = await self._db.query_one("fed_edu_max_seq",
                                           "SELECT MAX(seq) FROM federation_edu_queue")
            start = int(row[0]) + 1 if row and row[0] is not None else 1
            if self._seq is None:
                self._seq = itertools.count(start)
        return [next(self._seq) for _ in range(n)]

    # -- who is where --------------------------------------------------------------------

    async def joined_servers(self, room_id: str) -> set[str]:
        """Servers with a user joined to ``room_id`` (current state), and while the
        room has partial state (schema 0050) the servers its resident named."""
        rows = await self._db.query(
            "fed_joined_servers", "SELECT user_id FROM local_current_membership"
            " WHERE room_id = ? AND membership = 'join'", room_id)
        partial = await self._db.query(
            "fed_partial_servers", "SELECT server_name FROM partial_state_room_servers"
            " WHERE room_id = ?", room_id)
        return {server_of(str(r[0])) for r in rows} | {str(r[0]) for r in partial}

    async def servers_sharing_rooms(self, user_id: str) -> set[str]:
        """Servers with a user joined to a room ``user_id`` is joined to."""
        rows = await self._db.query(
            "fed_servers_sharing", "SELECT DISTINCT b.user_id FROM local_current_membership a"
            " JOIN local_current_membership b ON a.room_id = b.room_id"
            " WHERE a.user_id = ? AND a.membership = 'join' AND b.membership = 'join'",
            user_id)
        return {server_of(str(r[0])) for r in rows}

    # -- outbound queue ------------------------------------------------------------------

    async def enqueue_pdu(self, destinations: Iterable[str], stream_ordering: int,
                          room_id: str, event_id: str) -> None:
        """Queue one persisted event for each destination (idempotent). A destination
        that already had a later event of the room queued skips it: events of a room
        are queued in stream order, so it was queued (and maybe sent) already."""
        dests = sorted(set(destinations))
        if not dests:
            return

        def _do(txn: Txn) -> None:
            for d in dests:
                _ensure(txn, d)
                row = txn.query_one("SELECT stream_ordering FROM federation_destination_rooms"
                                    " WHERE destination = ? AND room_id = ?", (d, room_id))
                if row is not None and int(row[0]) >= stream_ordering:
                    continue
                txn.execute("INSERT INTO federation_pdu_queue (destination, stream_ordering,"
                            " room_id, event_id) VALUES (?, ?, ?, ?)"
                            " ON CONFLICT (destination, stream_ordering) DO NOTHING",
                            (d, stream_ordering, room_id, event_id))
                txn.execute("INSERT INTO federation_destination_rooms (destination, room_id,"
                            " stream_ordering) VALUES (?, ?, ?) ON CONFLICT (destination,"
                            " room_id) DO UPDATE SET stream_ordering = excluded.stream_ordering"
                            " WHERE federation_destination_rooms.stream_ordering"
                            " < excluded.stream_ordering", (d, room_id, stream_ordering))
        await self._db.run("fed_enqueue_pdu", _do)

    async def enqueue_edus(self, rows: Sequence[EduRow]) -> None:
        """Queue EDUs; one with a coalescing key replaces the queued one with that key."""
        if not rows:
            return
        seqs = await self._next_seqs(len(rows))

        def _do(txn: Txn) -> None:
            for seq, row in zip(seqs, rows, strict=True):
                _ensure(txn, row.destination)
                if row.coalesce_key is not None:
                    txn.execute("DELETE FROM federation_edu_queue WHERE destination = ?"
                                " AND coalesce_key = ?", (row.destination, row.coalesce_key))
                txn.execute("INSERT INTO federation_edu_queue (destination, seq, edu_type,"
                            " coalesce_key, content) VALUES (?, ?, ?, ?, ?)",
                            (row.destination, seq, row.edu_type, row.coalesce_key,
                             json.dumps(row.content, separators=(",", ":"))))
        await self._db.run("fed_enqueue_edus", _do)

    async def pending_destinations(self) -> list[str]:
        """Destinations with something queued or in flight (resumed at start)."""
        rows = await self._db.query(
            "fed_pending_destinations",
            "SELECT destination FROM federation_pdu_queue UNION"
            " SELECT destination FROM federation_edu_queue UNION"
            " SELECT destination FROM federation_outbound_txns")
        return sorted(str(r[0]) for r in rows)

    async def in_flight(self, destination: str) -> InFlight | None:
        row = await self._db.query_one(
            "fed_in_flight", "SELECT txn_id, body, up_to, pdu_count, edu_count"
            " FROM federation_outbound_txns WHERE destination = ?", destination)
        if row is None:
            return None
        return InFlight(destination, str(row[0]), json.loads(row[1]), int(row[2]),
                        int(row[3]), int(row[4]))

    async def peek(self, destination: str, max_pdus: int, max_edus: int,
                   catch_up_over: int) -> tuple[list[QueuedPdu], list[QueuedEdu]]:
        """The oldest queued PDUs and EDUs. When more than ``catch_up_over`` PDUs wait
        (a destination back after a long time), only the latest per room is kept: the
        destination fetches the gap with /get_missing_events, as Synapse's catch-up."""

        def _do(txn: Txn) -> tuple[list[QueuedPdu], list[QueuedEdu]]:
            count = txn.query_one("SELECT COUNT(*) FROM federation_pdu_queue"
                                  " WHERE destination = ?", (destination,))
            if count is not None and int(count[0]) > catch_up_over:
                txn.execute(
                    "DELETE FROM federation_pdu_queue WHERE destination = ? AND stream_ordering"
                    " < (SELECT MAX(q.stream_ordering) FROM federation_pdu_queue q"
                    " WHERE q.destination = federation_pdu_queue.destination"
                    " AND q.room_id = federation_pdu_queue.room_id)", (destination,))
            pdus = txn.query("SELECT stream_ordering, room_id, event_id FROM"
                             " federation_pdu_queue WHERE destination = ?"
                             " ORDER BY stream_ordering LIMIT ?", (destination, max_pdus))
            edus = txn.query("SELECT seq, edu_type, content FROM federation_edu_queue"
                             " WHERE destination = ? ORDER BY seq LIMIT ?",
                             (destination, max_edus))
            return ([QueuedPdu(int(r[0]), str(r[1]), str(r[2])) for r in pdus],
                    [QueuedEdu(int(r[0]), str(r[1]), json.loads(r[2])) for r in edus])
        return await self._db.run("fed_peek", _do)

    async def create_txn(self, destination: str, body: JsonDict, pdus: Sequence[QueuedPdu],
                         edus: Sequence[QueuedEdu], now_ms: int) -> InFlight:
        """Store the transaction about to be sent (with a fresh id) and take what it
        carries off the queue, in one database transaction."""
        up_to = max((p.stream_ordering for p in pdus), default=0)

        def _do(txn: Txn) -> InFlight:
            _ensure(txn, destination)
            row = txn.query_one("SELECT last_txn_seq FROM federation_destinations"
                                " WHERE destination = ?", (destination,))
            seq = (int(row[0]) if row else 0) + 1
            txn.execute("UPDATE federation_destinations SET last_txn_seq = ?"
                        " WHERE destination = ?", (seq, destination))
            # Unique across restarts of either side: the sequence never goes back.
            txn_id = f"{now_ms}-{seq}"
            txn.execute("INSERT INTO federation_outbound_txns (destination, txn_id, body, up_to,"
                        " pdu_count, edu_count, created_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (destination, txn_id, json.dumps(body, separators=(",", ":")), up_to,
                         len(pdus), len(edus), now_ms))
            txn.executemany("DELETE FROM federation_pdu_queue WHERE destination = ?"
                            " AND stream_ordering = ?",
                            [(destination, p.stream_ordering) for p in pdus])
            txn.executemany("DELETE FROM federation_edu_queue WHERE destination = ?"
                            " AND seq = ?", [(destination, e.seq) for e in edus])
            return InFlight(destination, txn_id, body, up_to, len(pdus), len(edus))
        return await self._db.run("fed_create_txn", _do)

    async def complete_txn(self, pending: InFlight, now_ms: int) -> None:
        """The destination acknowledged ``pending``: never sent again; backoff cleared."""

        def _do(txn: Txn) -> None:
            txn.execute("DELETE FROM federation_outbound_txns WHERE destination = ?"
                        " AND txn_id = ?", (pending.destination, pending.txn_id))
            txn.execute("UPDATE federation_destinations SET failure_ts = NULL,"
                        " retry_last_ts = 0, retry_interval = 0, last_success_ts = ?,"
                        " last_successful_stream_ordering = CASE WHEN ? > 0 AND"
                        " (last_successful_stream_ordering IS NULL OR"
                        " last_successful_stream_ordering < ?) THEN ?"
                        " ELSE last_successful_stream_ordering END WHERE destination = ?",
                        (now_ms, pending.up_to, pending.up_to, pending.up_to,
                         pending.destination))
        await self._db.run("fed_complete_txn", _do)

    async def drop_queue(self, destination: str) -> None:
        """Forget everything queued or in flight for ``destination`` (it is blocked or
        no longer allowed: nothing will ever be sent there)."""

        def _do(txn: Txn) -> None:
            for table in ("federation_pdu_queue", "federation_edu_queue",
                          "federation_outbound_txns"):
                txn.execute(f"DELETE FROM {table} WHERE destination = ?",  # noqa: S608
                            (destination,))
        await self._db.run("fed_drop_queue", _do)

    # -- backoff -------------------------------------------------------------------------

    async def get_destination(self, destination: str) -> Destination | None:
        row = await self._db.query_one(
            "fed_get_destination",
            f"SELECT {_DEST_COLS} FROM federation_destinations WHERE destination = ?",
            destination)
        return _dest(row) if row else None

    async def set_retry(self, destination: str, failure_ts: int | None, retry_last_ts: int,
                        retry_interval: int) -> None:
        def _do(txn: Txn) -> None:
            _ensure(txn, destination)
            txn.execute("UPDATE federation_destinations SET failure_ts = ?, retry_last_ts = ?,"
                        " retry_interval = ? WHERE destination = ?",
                        (failure_ts, retry_last_ts, retry_interval, destination))
        await self._db.run("fed_set_retry", _do)

    async def reset_retry(self, destination: str) -> None:
        await self.set_retry(destination, None, 0, 0)
        for listener in self.on_retry_reset:
            listener(destination)

    # -- admin ---------------------------------------------------------------------------

    async def list_destinations(self, offset: int, limit: int, order_by: str,
                                backwards: bool, search: str | None
                                ) -> tuple[list[Destination], int]:
        if order_by not in ORDER_COLUMNS:
            raise ValueError(order_by)
        where, args = "", []
        if search:
            escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%") \
                .replace("_", "\\_")
            where, args = " WHERE LOWER(destination) LIKE ? ESCAPE '\\'", [f"%{escaped}%"]
        direction = "DESC" if backwards else "ASC"
        # NULLs (never failed, never acknowledged) sort as the smallest on both engines.
        order = (f"CASE WHEN {order_by} IS NULL THEN 0 ELSE 1 END {direction},"
                 f" {order_by} {direction}, destination {direction}")
        rows = await self._db.query(
            "fed_list_destinations", f"SELECT {_DEST_COLS} FROM federation_destinations"
            f"{where} ORDER BY {order} LIMIT ? OFFSET ?", *args, limit, offset)  # noqa: S608
        total = await self._db.query_one(
            "fed_count_destinations",
            f"SELECT COUNT(*) FROM federation_destinations{where}", *args)  # noqa: S608
        return [_dest(r) for r in rows], int(total[0]) if total else 0

    async def destination_rooms(self, destination: str, offset: int, limit: int,
                                backwards: bool) -> tuple[list[tuple[str, int]], int]:
        direction = "DESC" if backwards else "ASC"
        rows = await self._db.query(
            "fed_destination_rooms", "SELECT room_id, stream_ordering FROM"
            " federation_destination_rooms WHERE destination = ?"
            f" ORDER BY room_id {direction} LIMIT ? OFFSET ?", destination, limit, offset)
        total = await self._db.query_one(
            "fed_count_destination_rooms", "SELECT COUNT(*) FROM federation_destination_rooms"
            " WHERE destination = ?", destination)
        return [(str(r[0]), int(r[1])) for r in rows], int(total[0]) if total else 0

    # -- replay after a crash ------------------------------------------------------------

    async def get_stream_position(self) -> int | None:
        row = await self._db.query_one("fed_get_position",
                                       "SELECT stream_ordering FROM federation_stream_position")
        return int(row[0]) if row else None

    async def set_stream_position(self, stream_ordering: int) -> None:
        await self._db.execute(
            "fed_set_position", "INSERT INTO federation_stream_position (lock, stream_ordering)"
            " VALUES ('X', ?) ON CONFLICT (lock) DO UPDATE SET stream_ordering ="
            " excluded.stream_ordering", stream_ordering)

    async def local_events_after(self, server_name: str, after: int, limit: int
                                 ) -> list[tuple[int, str, str]]:
        """(stream ordering, room id, event id) of events sent by local users after
        ``after`` that are in their room's graph (not outliers nor rejected)."""
        suffix = ":" + server_name.replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_")
        rows = await self._db.query(
            "fed_local_events_after", "SELECT stream_ordering, room_id, event_id FROM events"
            " WHERE stream_ordering > ? AND sender LIKE ? ESCAPE '\\' AND outlier = ?"
            " AND rejected_reason IS NULL ORDER BY stream_ordering LIMIT ?",
            after, "%" + suffix, False, limit)
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    # -- inbound -------------------------------------------------------------------------

    async def get_inbound_txn(self, origin: str, txn_id: str) -> JsonDict | None:
        row = await self._db.query_one(
            "fed_get_inbound_txn", "SELECT response FROM federation_inbound_txns"
            " WHERE origin = ? AND txn_id = ?", origin, txn_id)
        return json.loads(row[0]) if row else None

    async def store_inbound_txn(self, origin: str, txn_id: str, response: JsonDict,
                                now_ms: int, keep_ms: int) -> None:
        def _do(txn: Txn) -> None:
            txn.execute("DELETE FROM federation_inbound_txns WHERE received_ts < ?",
                        (now_ms - keep_ms,))
            txn.execute("INSERT INTO federation_inbound_txns (origin, txn_id, response,"
                        " received_ts) VALUES (?, ?, ?, ?) ON CONFLICT (origin, txn_id)"
                        " DO NOTHING", (origin, txn_id,
                                        json.dumps(response, separators=(",", ":")), now_ms))
        await self._db.run("fed_store_inbound_txn", _do)

    # -- device lists --------------------------------------------------------------------

    async def swap_device_list_prev(self, user_id: str, stream_id: int) -> list[int]:
        """Record ``stream_id`` as the latest update sent for ``user_id``; the previous
        one (the update's ``prev_id``), if any and older."""

        def _do(txn: Txn) -> list[int]:
            row = txn.query_one("SELECT stream_id FROM federation_device_list_sent"
                                " WHERE user_id = ?", (user_id,))
            if row is None:
                txn.execute("INSERT INTO federation_device_list_sent (user_id, stream_id)"
                            " VALUES (?, ?)", (user_id, stream_id))
                return []
            prev = int(row[0])
            if prev >= stream_id:
                return []
            txn.execute("UPDATE federation_device_list_sent SET stream_id = ?"
                        " WHERE user_id = ?", (stream_id, user_id))
            return [prev]
        return await self._db.run("fed_device_list_prev", _do)
