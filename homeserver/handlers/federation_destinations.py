"""Synapse's federation destinations admin API: what we know of each remote server we
send to (backoff, last acknowledged event), the rooms we share with one, and
``reset_connection`` (clear the backoff and retry now).

The rows are written by the federation sender (federation/sender/); with federation
off the list is whatever an earlier run left. A running sender listens for resets on
the store, so a reset sends what is queued at once. Resets are audited.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.admin_media import audit_action
from homeserver.handlers.admin_users import Actor
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.handlers.server_blocks import normalise_server_name
from homeserver.http.errors import Codes, MatrixError
from storage.stores.federation_queue import ORDER_COLUMNS, Destination, FederationQueueStore

JsonDict = dict[str, Any]


def destination_json(d: Destination) -> JsonDict:
    return {"destination": d.destination, "retry_last_ts": d.retry_last_ts,
            "retry_interval": d.retry_interval, "failure_ts": d.failure_ts,
            "last_successful_stream_ordering": d.last_successful_stream_ordering}


class FederationDestinationsAdmin:
    def __init__(self, store: FederationQueueStore, audit: SecurityEventRecorder) -> None:
        self._store = store
        self._audit = audit

    async def list_destinations(self, offset: int, limit: int, order_by: str,
                                backwards: bool, search: str | None) -> JsonDict:
        if order_by not in ORDER_COLUMNS:
            raise MatrixError(400, f"order_by must be one of {', '.join(ORDER_COLUMNS)}",
                              Codes.INVALID_PARAM)
        rows, total = await self._store.list_destinations(offset, limit, order_by,
                                                          backwards, search)
        out: JsonDict = {"destinations": [destination_json(d) for d in rows], "total": total}
        if offset + len(rows) < total:
            out["next_token"] = str(offset + len(rows))
        return out

    async def _known(self, destination: str) -> Destination:
        row = await self._store.get_destination(normalise_server_name(destination))
        if row is None:
            raise MatrixError(404, "Unknown destination", Codes.NOT_FOUND)
        return row

    async def get_destination(self, destination: str) -> JsonDict:
        return destination_json(await self._known(destination))

    async def destination_rooms(self, destination: str, offset: int, limit: int,
                                backwards: bool) -> JsonDict:
        row = await self._known(destination)
        rooms, total = await self._store.destination_rooms(row.destination, offset, limit,
                                                           backwards)
        out: JsonDict = {"rooms": [{"room_id": r, "stream_ordering": s} for r, s in rooms],
                         "total": total}
        if offset + len(rooms) < total:
            out["next_token"] = str(offset + len(rooms))
        return out

    async def reset_connection(self, actor: Actor, destination: str) -> None:
        """As Synapse: 404 for an unknown destination, 400 when it is not backing off."""
        row = await self._known(destination)
        if not row.retry_last_ts:
            raise MatrixError(400, "The retry timing does not need to be reset for a "
                                   "destination.", Codes.INVALID_PARAM)
        await self._store.reset_retry(row.destination)
        await audit_action(self._audit, actor, "reset_federation_connection",
                           row.destination, destination=row.destination)
