"""Inbound transactions: ``PUT /_matrix/federation/v1/send/{txnId}`` (X-Matrix).

Idempotent per (origin, txn id): the answer is stored and a transaction sent again
gets the same answer without being processed again. One transaction per origin is
processed at a time (so a retry racing the original waits for its answer). More than
50 PDUs or 100 EDUs is 400, as the spec says; a blocked origin is 403.

PDUs go to the ingest (``receive_pdu(origin, pdu) -> error or None``, federation/
ingest.py); each PDU's result is in the answer under its event id. With event
persisters the ingest hands each PDU to its room's writer: when that process cannot be
reached (or answers 503) the transaction is answered 503 and not remembered, so the
sending server retries it instead of taking its PDUs as refused. Without an ingest
every PDU is answered with an error (not accepted) and nothing is stored. EDUs go to
:class:`federation.inbound_edus.InboundEdus`, within one budget per transaction.
Every request of an origin counts against its ``federation_origin`` rate limit (the
route table, homeserver/http/rate_classes.py): past it, 429 ``M_LIMIT_EXCEEDED``.
A transaction from a server also tells the sender it is up (its queue is retried at
once).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer

from federation.inbound_edus import EduBudget, InboundEdus
from homeserver.clock import Clock
from homeserver.events.hashing import compute_event_id
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.params import MAX_INT64
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from storage.stores.federation_queue import FederationQueueStore
from storage.stores.rooms import RoomStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
MAX_PDUS = 50
MAX_EDUS = 100
MAX_TXN_ID_BYTES = 255
# How long an answered transaction id is remembered (a sender retries within hours).
TXN_KEEP_MS = 7 * 24 * 3600 * 1000
NOT_ACCEPTED = "PDUs are not accepted by this server yet"
DEFAULT_ROOM_VERSION = "10"  # the id format of an event of a room we do not know

SEND_SCHEMA: JsonDict = {
    "type": "object",
    "required": ["pdus"],
    "properties": {
        "origin": {"type": "string", "maxLength": 255},
        "origin_server_ts": {"type": "integer", "minimum": 0, "maximum": MAX_INT64},
        "pdus": {"type": "array", "items": {"type": "object"}},
        "edus": {"type": "array", "items": {"type": "object"}},
    },
}


class SendServlet:
    def __init__(self, clock: Clock, store: FederationQueueStore, rooms: RoomStore,
                 edus: InboundEdus, is_blocked: Callable[[str], Awaitable[bool]],
                 on_heard_from: Callable[[str], Awaitable[None]] | None = None,
                 ingest: Any = None) -> None:
        self._clock = clock
        self._store = store
        self._rooms = rooms
        self._edus = edus
        self._is_blocked = is_blocked
        self._on_heard_from = on_heard_from
        self.ingest = ingest  # federation/ingest.py FederationIngest, set when it exists
        self._locks: dict[str, defer.DeferredLock] = {}

    def register(self, router: Router) -> None:
        router.add("PUT", "/_matrix/federation/v1/send/{txnId}", self.on_send,
                   auth="federation", body_schema=SEND_SCHEMA)

    async def on_send(self, req: ApiRequest, txnId: str) -> tuple[int, Any]:  # noqa: N803
        origin = req.origin
        assert origin is not None
        if not txnId or len(txnId.encode("utf-8")) > MAX_TXN_ID_BYTES:
            raise MatrixError(400, "Invalid transaction ID", Codes.INVALID_PARAM)
        body = req.body
        if len(body["pdus"]) > MAX_PDUS or len(body.get("edus", [])) > MAX_EDUS:
            raise MatrixError(400, f"A transaction carries at most {MAX_PDUS} PDUs and "
                                   f"{MAX_EDUS} EDUs", Codes.BAD_JSON)
        if await self._is_blocked(origin):
            raise MatrixError(403, "Federation denied with this server", Codes.FORBIDDEN)
        lock = self._locks.get(origin)
        if lock is None:
            lock = self._locks[origin] = defer.DeferredLock()
        await lock.acquire()
        try:
            answer = await self._store.get_inbound_txn(origin, txnId)
            if answer is None:
                answer = await self._process(origin, body)
                await self._store.store_inbound_txn(origin, txnId, answer,
                                                    self._clock.time_msec(), TXN_KEEP_MS)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(origin, None)
        if self._on_heard_from is not None:
            await self._on_heard_from(origin)
        return 200, answer

    async def _process(self, origin: str, body: JsonDict) -> JsonDict:
        results: dict[str, JsonDict] = {}
        for pdu in body["pdus"]:
            event_id = await self._event_id(pdu)
            if event_id is None:
                continue  # no id to answer under: the spec has us skip it
            if self.ingest is None:
                results[event_id] = {"error": NOT_ACCEPTED}
                continue
            try:
                error = await self.ingest.receive_pdu(origin, pdu)
            except MatrixError as e:
                if e.code in (502, 503):
                    # The room's writer (an event persister) is unreachable or busy: the
                    # whole transaction is answered 503 and not remembered, so the
                    # sender retries it (the PDUs stored meanwhile are then "known").
                    logger.warning("a PDU from %s could not be persisted now: %s",
                                   origin, e.code)
                    raise MatrixError(503, "This server cannot take the transaction "
                                      "now; try again", Codes.UNKNOWN) from e
                logger.exception("ingest failed on a PDU from %s", origin)
                error = "internal error"
            except Exception:  # one PDU never fails the others
                logger.exception("ingest failed on a PDU from %s", origin)
                error = "internal error"
            results[event_id] = {} if error is None else {"error": str(error)}
        budget = EduBudget()  # EDU floods: federation/inbound_edus.py TXN_BUDGET
        for edu in body.get("edus", []):
            await self._edus.handle(origin, edu, budget)
        return {"pdus": results}

    async def _event_id(self, pdu: JsonDict) -> str | None:
        room_id = pdu.get("room_id")
        version = await self._rooms.get_room_version(room_id) \
            if isinstance(room_id, str) and len(room_id) <= 255 else None
        try:
            return compute_event_id(pdu, version or DEFAULT_ROOM_VERSION)
        except Exception:  # noqa: BLE001 (any malformed PDU: fall back to its event_id)
            event_id = pdu.get("event_id")
            return event_id if isinstance(event_id, str) and len(event_id) <= 255 else None
