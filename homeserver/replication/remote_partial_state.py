"""Faster (partial-state) joins with event persisters (issue 18).

One process runs a partial-state join the same way (homeserver/handlers/partial_state.py):
mark the room, persist the join on the resident's partial answer, resync the members in
the background in the room's queue. With event persisters the steps are split where
the resources are:

* main runs the join (make_join/send_join with ``omit_members``, its federation client
  and keyring), then asks the room's writer (``partial_state``) to ``mark`` the room
  before the answer's state and the join are handed over (``persist_remote``), to
  ``unmark`` it if that failed, and to ``resync`` it after. The writer keeps the mark
  in its persister (its checks of other servers' events on partial state run there)
  and resyncs in its own room queue, which only it has (from the mark's row; from
  main's call only when it dropped the mark, having restarted before the join landed).
* the writer's resync fetches the full state at the join through main
  (``fetch_state``): main asks the other server with its federation client and its
  history fetcher (each event checked and stored as on every ingest path, through
  the room's writer again), and answers the state map.

A writer restarted resumes the resyncs of its rooms; main resumes only those of rooms
it writes. /sync on any process reads the marks from the database.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from homeserver.handlers.partial_state import PartialStateHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.replication.multi_writer import writer_for
from homeserver.replication.remote_create import _str
from homeserver.replication.remote_persist import MAX_SERVERS, _bad, _state_map
from storage.stores.partial_state import PartialStateRoom, PartialStateStore

if TYPE_CHECKING:
    from homeserver.config.model import Config
    from homeserver.config.workers import WorkersConfig
    from homeserver.replication.remote_create import InternalCalls
    from homeserver.replication.remote_persist import RemoteWrites
    from storage.stores.events import StateMap

logger = logging.getLogger(__name__)

PARTIAL_STATE = "partial_state"  # main -> the room's writer: mark, unmark, resync
FETCH_STATE = "fetch_state"  # a writer -> main: the full state at the join
_OPS = ("mark", "unmark", "resync")


class RemotePartialState:
    """On main: :class:`PartialStateHandler`'s joining steps for a room another process
    writes, run by that writer."""

    def __init__(self, remote: RemoteWrites) -> None:
        self._remote = remote

    async def _call(self, op: str, room_id: str, **more: Any) -> None:
        await self._remote.post(self._remote.writer(room_id), PARTIAL_STATE,
                                {"op": op, "room_id": room_id, **more})

    async def mark(self, room_id: str, join_event_id: str, resident: str,
                   servers: list[str] | tuple[str, ...]) -> None:
        await self._call("mark", room_id, join_event_id=join_event_id, resident=resident,
                         servers=list(servers)[:MAX_SERVERS])

    async def unmark(self, room_id: str) -> None:
        await self._call("unmark", room_id)

    def resync_soon(self, room: PartialStateRoom) -> None:
        """Ask the writer to start the resync (in the background, as the local handler's
        is). Should the call fail, the mark stays and the writer's next start resumes it."""
        def failed(f: Any) -> None:
            logger.warning("asking the room's writer to resync a partial-state room "
                           "failed: %s", f.getErrorMessage())
        defer.ensureDeferred(self._call(
            "resync", room.room_id, join_event_id=room.join_event_id, resident=room.resident,
            servers=list(room.servers)[:MAX_SERVERS])).addErrback(failed)


class RemoteStateFetch:
    """On a writer: the resync's state fetch, run by main."""

    def __init__(self, remote: RemoteWrites) -> None:
        self._remote = remote

    async def __call__(self, server: str, room_id: str, event_id: str) -> StateMap | None:
        answer = await self._remote.post(self._remote.main(), FETCH_STATE, {
            "server": server, "room_id": room_id, "event_id": event_id})
        try:
            return _state_map(answer.get("state"), optional=True)
        except MatrixError:
            raise RuntimeError("main answered a bad state map") from None


# ---- the receiving sides

def partial_state_handler(handler: PartialStateHandler, wc: WorkersConfig
                          ) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """On a writer: main's joining steps for a room this process writes."""
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        op = body.get("op")
        if op not in _OPS:
            raise _bad("op")
        room_id = _str(body, "room_id", "!", limit=255)
        if writer_for(wc, room_id) != wc.instance:
            raise MatrixError(400, "This process does not write the room", Codes.BAD_JSON)
        if op == "unmark":
            await handler.unmark(room_id)
            return {}
        servers = body.get("servers")
        if not isinstance(servers, list) or len(servers) > MAX_SERVERS or not all(
                isinstance(s, str) and 0 < len(s) <= 255 for s in servers):
            raise _bad("servers")
        join_event_id = _str(body, "join_event_id", "$", limit=255)
        resident = _str(body, "resident", limit=255)
        if op == "mark":
            await handler.mark(room_id, join_event_id, resident, servers)
            return {}
        room = await handler.listed(room_id)
        if room is None:
            # The mark was dropped meanwhile: this process restarted between main's
            # mark and the join landing, and its resumed resync found no join yet.
            # The join is stored now (main asks only then): mark it again.
            await handler.mark(room_id, join_event_id, resident, servers)
            room = PartialStateRoom(room_id, join_event_id, resident, tuple(servers))
        handler.resync_soon(room)
        return {}

    return handle


def fetch_state_handler(fetch: Callable[[str, str, str], Awaitable[StateMap | None]],
                        is_blocked: Callable[[str], Awaitable[bool]] | None
                        ) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """On main: a writer's resync asks ``server`` for the state at the join."""
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        server = _str(body, "server", limit=255)
        room_id = _str(body, "room_id", "!", limit=255)
        event_id = _str(body, "event_id", "$", limit=255)
        if is_blocked is not None and await is_blocked(server):
            return {"state": None}
        state = await fetch(server, room_id, event_id)
        return {"state": None if state is None else
                [[t, sk, eid] for (t, sk), eid in state.items()]}

    return handle


# ---- wiring

def wire_partial_state(config: Config, remote: RemoteWrites | None, calls: InternalCalls | None,
                       rooms: Any, stores: Any, db: Any, notifier: Any, clock: Any,
                       federation: Any) -> PartialStateHandler | None:
    """With event persisters and federation on (``remote``: wire_federation_calls's):
    main's hooks and fetch, or a writer's own handler (returned, to be stopped with the
    process; its resyncs resumed)."""
    wc = config.workers
    if remote is None or calls is None or calls.resource is None:
        return None
    membership = getattr(federation, "membership", None)  # RemoteMembership
    if wc.is_main:
        local = getattr(membership, "partial_state", None)
        if membership is None or local is None or local.fetch_state is None:
            return None
        membership.remote_partial_state = RemotePartialState(remote)
        calls.resource.add(FETCH_STATE, fetch_state_handler(local.fetch_state,
                                                            local.is_blocked))
        return None
    if wc.instance not in wc.event_writers:
        return None
    handler = PartialStateHandler(config.server_name, clock,
                                  PartialStateStore(db, stores.events.codec), stores.events,
                                  rooms.persister, notifier)
    handler.fetch_state = RemoteStateFetch(remote)
    calls.resource.add(PARTIAL_STATE, partial_state_handler(handler, wc))
    rooms.pagination.await_full_state = handler.wait_for_full_state

    def failed(f: Any) -> None:
        logger.error("resuming partial-state resyncs failed: %s", f.getErrorMessage())
    defer.ensureDeferred(handler.start()).addErrback(failed)
    return handler
