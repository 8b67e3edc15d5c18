"""Receiving PDUs from other servers into rooms this server takes part in.

Interface (used by the ``/send`` servlet, federation/send_servlet.py, and later joins)::

    ingest = FederationIngest(persister, keyring, is_blocked)
    error = await ingest.receive_pdu(origin, pdu)   # str (not accepted) or None

``receive_pdu`` takes one PDU as JSON from the transaction of ``origin`` and runs the
spec's "Checks performed on receipt of a PDU" in order:

1. the room is one this server holds (its version picks the format), neither the
   origin nor the sender's server is blocked (``federation.blocked_servers`` and the
   admin API) nor denied by the room's ``m.room.server_acl``;
2. the format of its room version (federation/pdu_checks.py ``parse_pdu``): dropped,
   with an error, when malformed or over 65536 bytes;
3. signatures (sender's server, v1/v2 event id domain, authorising server; origin if
   it signed): dropped when one is missing or bad;
4. content hash: on a mismatch the redacted form is what is kept;
5-6. authorisation, state and soft failure: :meth:`EventPersister.persist_remote`
   (homeserver/handlers/event_dag.py) stores it as ``REMOTE``.

Answers: None for an accepted, soft-failed (the spec: not an error to the sender) or
already known event; an error string otherwise (dropped, rejected, or prev/auth events
this server does not hold and that the ``fetcher`` (federation/missing_events.py, set
by federation/history.py ``register_history``) could not fetch with ``/event_auth``,
``/get_missing_events`` and ``/state_ids``).

:meth:`receive_pdus` does the same for events handed over together (a join's state
and auth chain as outliers, a backfilled batch), with the kind and ``state_before``
of :meth:`EventPersister.persist_remote`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from federation.pdu_checks import (
    PduError,
    check_content_hash,
    check_signatures,
    parse_pdu,
    server_allowed_by_acl,
)
from homeserver.events.model import Event
from homeserver.events.power_levels import domain_of
from homeserver.handlers.event_persister import (
    EventPersister,
    MissingEventsError,
    Outcome,
    PersistKind,
)
from homeserver.http.errors import MatrixError
from storage.stores.events import StateMap

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
_ACL = ("m.room.server_acl", "")


class FederationIngest:
    def __init__(self, persister: EventPersister, keyring: Any,
                 is_blocked: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self._persister = persister
        self.persister = persister  # for callers that persist checked events themselves
        self._keyring = keyring
        self._is_blocked = is_blocked
        # federation/missing_events.py HistoryFetcher: fills gaps under a PDU (or None).
        self.fetcher: Any = None

    async def receive_pdu(self, origin: str, pdu: JsonDict) -> str | None:
        """Check and persist one PDU of ``origin``'s transaction (see the module)."""
        try:
            event = await self.check_pdu(origin, pdu)
            if not (await self._persister.snapshot(event.room_id)).state_ids:
                # A room known here only by an out-of-band invite or knock
                # (federation/membership.py): we are not in it and take none of its events.
                raise PduError("this server is not in the room")
            try:
                outcome = (await self._persister.persist_remote(
                    event.room_id, [event], PersistKind.REMOTE))[0]
            except MissingEventsError as missing:
                if self.fetcher is None:
                    raise
                # federation/missing_events.py: get_missing_events, then /state_ids.
                outcome = await self.fetcher.persist_after_gap(origin, event, missing)
        except PduError as e:
            logger.info("Dropped a PDU from %s: %s", origin, e.reason)
            return e.reason
        except MissingEventsError as e:
            return f"{len(e.missing)} {e.what} event(s) are not known here"
        if outcome.status == "rejected":
            logger.info("Rejected event %s from %s: %s", outcome.event_id, origin,
                        outcome.reason)
            return f"rejected: {outcome.reason}"
        return None

    async def receive_pdus(self, origin: str, room_id: str, pdus: Sequence[JsonDict],
                           kind: PersistKind, state_before: StateMap | None = None
                           ) -> tuple[list[Outcome], dict[int, str]]:
        """Check PDUs handed over together and persist the good ones as ``kind``:
        (outcomes of the persisted ones, index of each dropped PDU -> why).
        :class:`MissingEventsError` propagates (nothing after it in graph order is
        stored)."""
        events: list[Event] = []
        dropped: dict[int, str] = {}
        for i, pdu in enumerate(pdus):
            try:
                event = await self.check_pdu(origin, pdu, room_id)
            except PduError as e:
                dropped[i] = e.reason
                continue
            events.append(event)
        if not events:
            return [], dropped
        outcomes = await self._persister.persist_remote(room_id, events, kind, state_before)
        return outcomes, dropped

    async def check_pdu(self, origin: str, pdu: JsonDict, room_id: str | None = None) -> Event:
        """Steps 1-4: the event to persist (redacted if its hash did not match), or
        :class:`PduError`."""
        if not isinstance(pdu, dict):
            raise PduError("a PDU must be an object")
        if room_id is None:
            found = pdu.get("room_id")
            if not isinstance(found, str) or len(found) > 255:
                raise PduError("the PDU names no room")
            room_id = found
        try:
            version = await self._persister.room_version(room_id)
        except MatrixError:
            raise PduError("this server is not in the room") from None
        event = parse_pdu(pdu, version, room_id)
        sender_server = domain_of(event.sender)
        if self._is_blocked is not None:
            for server in {origin, sender_server}:
                if await self._is_blocked(server):
                    raise PduError("federation with this server is blocked")
        acl = (await self._persister.current_state(room_id, [_ACL])).get(_ACL)
        if acl is not None:
            for server in {origin, sender_server}:
                if not server_allowed_by_acl(server, acl.content):
                    raise PduError(f"server {server} is denied by the room's ACL")
        await check_signatures(self._keyring, event, origin)
        return check_content_hash(event)


def build_ingest(config: Any, clock: Any, events: Any, keyring: Any,
                 deps: Any) -> FederationIngest | None:
    """The ingest of a federating homeserver (None without the rooms area)."""
    if deps is None or deps.rooms is None or deps.stores is None:
        return None
    from homeserver.handlers.server_blocks import ServerBlocks

    blocks = ServerBlocks(config.server_name, clock, deps.stores.blocked_servers, events,
                          config.federation_blocked_servers)
    return FederationIngest(deps.rooms.persister, keyring, blocks.is_blocked)
