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
4b. spam (issue 16): the plugins' ``check_event_for_spam`` (the built-in e2ee_only
   policy included) on an event whose sender is another server's user, with the
   room's current state as ``room``, after signatures and hash, before authorisation
   (Synapse's order, federation_base). A refused event is *soft-failed* as Synapse
   does: only its redacted form is kept, stored as an outlier (never served to
   clients, in no state, no forward extremity; a later event citing it gets the state
   before it from its sender's ``/state_ids``), and the sender is answered as for an
   accepted event. Each refusal is a ``policy_rejection`` security event (sender,
   room, event type, origin, policy; never content). A plugin that fails refuses
   (fail closed, as for local events);
5-6. authorisation, state and soft failure: :meth:`EventPersister.persist_remote`
   (homeserver/handlers/event_dag.py) stores it as ``REMOTE``.

Answers: None for an accepted, soft-failed (the spec: not an error to the sender) or
already known event; an error string otherwise (dropped, rejected, or prev/auth events
this server does not hold and that the ``fetcher`` (federation/missing_events.py, set
by federation/history.py ``register_history``) could not fetch with ``/event_auth``,
``/get_missing_events`` and ``/state_ids``).

:meth:`receive_pdus` does the same for events handed over together (a join's state
and auth chain as outliers, a backfilled batch), with the kind and ``state_before``
of :meth:`EventPersister.persist_remote`. A spam-refused event there is dropped,
except from a join's state and auth chain (kind ``OUTLIER``), which must stay whole:
there its redacted form is kept. Other callers of :meth:`check_pdu` (gap filling,
backfill) see :class:`~federation.pdu_checks.SpamRefusal` as a dropped PDU.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from federation.pdu_checks import (
    PduError,
    SpamRefusal,
    check_content_hash,
    check_signatures,
    parse_pdu,
    redacted,
    server_allowed_by_acl,
)
from homeserver.detection.policy import POLICY_KEY
from homeserver.events.auth import required_signature_servers
from homeserver.events.model import Event
from homeserver.events.power_levels import domain_of
from homeserver.handlers.event_persister import (
    EventPersister,
    MissingEventsError,
    Outcome,
    PersistKind,
    RoomSnapshot,
)
from homeserver.http.errors import MatrixError
from storage.stores.events import StateMap

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
_ACL = ("m.room.server_acl", "")
SPAM_HOOK = "check_event_for_spam"


class SpamGate:
    """The plugins' gates applied to other servers' users (issue 16), and the audit
    entry of each refusal. ``check_event`` is the plugin host's event validator
    (plugins/host.py ``check_event``: raises the refusal as a MatrixError)."""

    def __init__(self, server_name: str, check_event: Callable[[Event, Any], Awaitable[None]],
                 has_checks: Callable[[], bool], recorder: Any = None) -> None:
        self._server_name = server_name
        self._check_event = check_event
        self._has_checks = has_checks
        self.has_checks = has_checks  # whether any check runs (else no state is read)
        self._recorder = recorder  # homeserver.handlers.security_events recorder
        self.refused = 0  # events soft-failed or dropped as spam (tests, debugging)

    async def policy_refusing(self, origin: str, event: Event,
                              state_ids: StateMap) -> str | None:
        """The name of the policy refusing ``event`` (recorded), or None. Events of
        this server's own users were checked when they were made."""
        if domain_of(event.sender) == self._server_name or not self._has_checks():
            return None
        try:
            await self._check_event(event, RoomSnapshot(dict(state_ids), [], None, 0))
        except MatrixError as e:
            marked = e.extra.get(POLICY_KEY)
            policy = marked if isinstance(marked, str) else SPAM_HOOK
            self.refused += 1
            await self.record(origin, event.sender, event.room_id, policy, e.errcode,
                              event_type=event.type)
            return policy
        return None

    async def record(self, origin: str, user_id: str, room_id: str, policy: str,
                     errcode: str, **details: str) -> None:
        """One ``policy_rejection`` security event (the detectors count them per user):
        identifiers only, never content or the plugin's message."""
        if self._recorder is None:
            return
        try:
            await self._recorder.record(
                "policy_rejection", "failure", None, user_id=user_id, reason=policy,
                target=room_id, details={"policy": policy, "room_id": room_id,
                                         "origin": origin, "errcode": errcode, **details})
        except Exception:  # noqa: BLE001 (the refusal stands even if the audit write fails)
            logger.exception("could not record a federation policy rejection")


class FederationIngest:
    def __init__(self, persister: EventPersister, keyring: Any,
                 is_blocked: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self._persister = persister
        self.persister = persister  # for callers that persist checked events themselves
        self._keyring = keyring
        self._is_blocked = is_blocked
        # federation/missing_events.py HistoryFetcher: fills gaps under a PDU (or None).
        self.fetcher: Any = None
        # Spam checks on other servers' events (None: no plugin host).
        self.spam: SpamGate | None = None

    async def receive_pdu(self, origin: str, pdu: JsonDict) -> str | None:
        """Check and persist one PDU of ``origin``'s transaction (see the module)."""
        try:
            try:
                event = await self.check_pdu(origin, pdu)
            except SpamRefusal as spam:
                await self._soft_fail(origin, spam)
                return None
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

    async def _soft_fail(self, origin: str, spam: SpamRefusal) -> None:
        """Keep a spam-refused event's redacted form as an outlier: hidden from
        clients, in no state, never a prev event of ours (see the module)."""
        event = spam.event
        if not (await self._persister.snapshot(event.room_id)).state_ids:
            raise PduError("this server is not in the room")
        try:
            await self._persister.persist_remote(event.room_id, [event], PersistKind.OUTLIER)
        except MissingEventsError:
            pass  # its auth events are unknown here: nothing is kept, it stays unseen
        logger.info("Soft-failed event %s from %s: refused by %s", event.event_id, origin,
                    spam.policy)

    async def receive_pdus(self, origin: str, room_id: str, pdus: Sequence[JsonDict],
                           kind: PersistKind, state_before: StateMap | None = None
                           ) -> tuple[list[Outcome], dict[int, str]]:
        """Check PDUs handed over together and persist the good ones as ``kind``:
        (outcomes of the persisted ones, index of each dropped PDU -> why).
        :class:`MissingEventsError` propagates (nothing after it in graph order is
        stored)."""
        try:
            version = await self._persister.room_version(room_id)
        except MatrixError:
            return [], {i: "this server is not in the room" for i in range(len(pdus))}
        parsed: list[Event | PduError] = []
        for pdu in pdus:
            try:
                parsed.append(parse_pdu(pdu, version, room_id))
            except PduError as e:
                parsed.append(e)
        return await self.receive_events(origin, room_id, parsed, kind, state_before)

    async def receive_events(self, origin: str, room_id: str,
                             parsed: Sequence[Event | PduError], kind: PersistKind,
                             state_before: StateMap | None = None
                             ) -> tuple[list[Outcome], dict[int, str]]:
        """:meth:`receive_pdus` for PDUs the caller parsed already (``parse_pdu`` with
        this room's version and id; a :class:`PduError` stands for one that failed),
        so a join's thousands of state events are parsed once (issue 16 "Speed"). The
        signing keys of the whole batch are fetched together first."""
        events, dropped = await self.check_events(origin, room_id, parsed, kind)
        if not events:
            return [], dropped
        outcomes = await self._persister.persist_remote(room_id, events, kind, state_before)
        return outcomes, dropped

    async def prefetch_keys(self, origin: str, parsed: Iterable[Event | PduError]) -> None:
        """Fetch the signing keys these events' signature checks need, all together."""
        prefetch = getattr(self._keyring, "prefetch", None)
        if prefetch is not None:
            await prefetch(_signers(origin, (e for e in parsed if isinstance(e, Event))))

    async def check_events(self, origin: str, room_id: str,
                           parsed: Sequence[Event | PduError], kind: PersistKind
                           ) -> tuple[list[Event], dict[int, str]]:
        """Steps 2-4b for a batch: (the events to persist, index of each dropped
        PDU -> why)."""
        events: list[Event] = []
        dropped: dict[int, str] = {}
        await self.prefetch_keys(origin, parsed)
        acl = (await self._persister.current_state(room_id, [_ACL])).get(_ACL)
        # Each server's block status read once for the batch, not per event (a join's
        # state has thousands of events from a few servers: issue 16 "Speed").
        blocked: dict[str, bool] = {}
        for i, item in enumerate(parsed):
            if isinstance(item, PduError):
                dropped[i] = item.reason
                continue
            try:
                event = await self.check_event(origin, item, acl, blocked)
            except SpamRefusal as spam:
                if kind is not PersistKind.OUTLIER:
                    dropped[i] = spam.reason
                    continue
                event = spam.event  # a join's state and auth chain stay whole
            except PduError as e:
                dropped[i] = e.reason
                continue
            events.append(event)
        return events, dropped

    async def check_pdu(self, origin: str, pdu: JsonDict, room_id: str | None = None) -> Event:
        """Steps 1-4b: the event to persist (redacted if its hash did not match), or
        :class:`PduError` (:class:`SpamRefusal` when a spam check refused it)."""
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
        acl = (await self._persister.current_state(room_id, [_ACL])).get(_ACL)
        return await self.check_event(origin, event, acl)

    async def check_event(self, origin: str, event: Event, acl: Event | None,
                          blocked: dict[str, bool] | None = None) -> Event:
        """Steps 2-4b of :meth:`check_pdu` for a parsed event; ``acl``: the room's
        current ``m.room.server_acl`` (None: none); ``blocked``: block statuses already
        read for this batch (filled in here)."""
        room_id = event.room_id
        sender_server = domain_of(event.sender)
        if self._is_blocked is not None:
            for server in {origin, sender_server}:
                is_blocked = blocked.get(server) if blocked is not None else None
                if is_blocked is None:
                    is_blocked = await self._is_blocked(server)
                    if blocked is not None:
                        blocked[server] = is_blocked
                if is_blocked:
                    raise PduError("federation with this server is blocked")
        if acl is not None:
            for server in {origin, sender_server}:
                if not server_allowed_by_acl(server, acl.content):
                    raise PduError(f"server {server} is denied by the room's ACL")
        await check_signatures(self._keyring, event, origin)
        event = check_content_hash(event)
        if self.spam is not None and self.spam.has_checks():
            state = (await self._persister.snapshot(room_id)).state_ids
            policy = await self.spam.policy_refusing(origin, event, state)
            if policy is not None:
                raise SpamRefusal(redacted(event), policy)
        return event


def _signers(origin: str, events: Iterable[Event]) -> dict[str, set[str]]:
    """server -> the key ids whose signatures :func:`check_signatures` will check on
    ``events`` (every signature by a server that must sign, and the origin's)."""
    out: dict[str, set[str]] = {}
    for event in events:
        sigs = event.pdu.get("signatures")
        if not isinstance(sigs, dict):
            continue
        try:
            servers = set(required_signature_servers(event))
        except Exception:  # noqa: BLE001 (the check proper reports the malformed event)
            continue
        if isinstance(sigs.get(origin), dict):
            servers.add(origin)
        for server in servers:
            per_server = sigs.get(server)
            if isinstance(per_server, dict):
                out.setdefault(server, set()).update(
                    k for k in per_server if isinstance(k, str))
    return out


def build_ingest(config: Any, clock: Any, events: Any, keyring: Any,
                 deps: Any) -> FederationIngest | None:
    """The ingest of a federating homeserver (None without the rooms area)."""
    if deps is None or deps.rooms is None or deps.stores is None:
        return None
    from homeserver.handlers.server_blocks import ServerBlocks

    blocks = ServerBlocks(config.server_name, clock, deps.stores.blocked_servers, events,
                          config.federation_blocked_servers)
    ingest = FederationIngest(deps.rooms.persister, keyring, blocks.is_blocked)
    plugins = getattr(deps, "plugins", None)  # plugins/host.py PluginHost
    if plugins is not None:
        ingest.spam = SpamGate(config.server_name, plugins.check_event,
                               lambda: bool(plugins.impls(SPAM_HOOK)), events)
    return ingest
