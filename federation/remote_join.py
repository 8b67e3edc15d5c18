"""The joining server's side of membership over federation (issue 16), and wiring.

Set as the membership handler's hooks (handlers never import federation/):

* ``remote_join``: a local user joins a room this server holds no state of. Each
  candidate server (the client's ``via``, the alias' servers, the inviter's server,
  the room id's server) is asked for ``make_join``; a 4xx answer is the client's
  answer (banned, invite-only, version), a 5xx or unreachable server moves on. The
  template is filled in and signed, sent with ``send_join``; the returned auth chain
  and state are checked and stored as outliers, then the join is persisted on that
  state (``FederationIngest.receive_pdus``), so the room and its state appear in
  the user's /sync and the server takes part in the room from then on. With
  ``federation.partial_state_joins`` send_join asks with ``omit_members``; an answer
  with ``members_omitted`` marks the room partial-state first and its full state is
  resynced in the background (homeserver/handlers/partial_state.py). Each PDU of the
  answer is parsed once; each phase (make_join, send_join, parse, keys, signatures,
  persist_state, persist_join) is timed: logged at DEBUG and observed in
  ``parley_federation_join_phase_seconds{phase}`` (issue 16 "Speed").
* ``remote_knock``: the same with ``make_knock``/``send_knock``; the knock is held
  out of band with the stripped state the resident gave.
* ``remote_leave``: rejecting an invite (or withdrawing a knock) in a room we hold
  no state of: ``make_leave``/``send_leave`` through the inviting server.
* Invites out: an invite of another server's user, once it passed the auth rules
  here, is sent with ``PUT /v2/invite`` before it is stored; the invitee's server
  co-signs it (a refusal is the inviting client's error).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from prometheus_client import CollectorRegistry, Histogram
from twisted.internet import defer

from federation.client import FederationError, FederationHttpError
from federation.membership import STRIPPED_STATE_TYPES, MembershipServlets, stripped
from federation.pdu_checks import PduError, check_signatures, parse_pdu
from homeserver.events.hashing import compute_event_id
from homeserver.events.model import Event
from homeserver.events.power_levels import domain_of
from homeserver.events.room_versions import (
    KNOWN_ROOM_VERSIONS,
    EventFormat,
    RoomVersion,
    get_room_version,
)
from homeserver.events.signing import sign_event
from homeserver.handlers.event_persister import MissingEventsError, PersistKind, RoomSnapshot
from homeserver.handlers.partial_state import PartialStateHandler
from homeserver.http.errors import Codes, MatrixError
from storage.stores.out_of_band import OutOfBandStore
from storage.stores.partial_state import PartialStateRoom, PartialStateStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
FED = "/_matrix/federation"
MAX_STATE_EVENTS = 200_000
MAX_SERVERS_IN_ROOM = 10_000  # of a send_join answer's servers_in_room
# Template keys a joining server keeps; the rest (hashes, signatures, unsigned) it makes.
_TEMPLATE_KEYS = ("room_id", "type", "state_key", "sender", "prev_events", "auth_events",
                  "depth", "redacts")
# Content keys the resident server decides (the rest are ours: displayname, reason...).
_RESIDENT_KEYS = ("membership", "join_authorised_via_users_server")


def q(value: str) -> str:
    return quote(value, safe="")


JOIN_PHASES = ("make_join", "send_join", "parse", "keys", "signatures", "persist_state",
               "persist_join")
_PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  300.0)


class JoinPhaseMetrics:
    """``parley_federation_join_phase_seconds{phase}``: where a remote join's time goes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            "parley_federation_join_phase_seconds",
            "Time of each phase of joining a room over federation.", ["phase"],
            buckets=_PHASE_BUCKETS, registry=registry)


class JoinTimer:
    """Wall-clock time per phase of one join (never the test clock: what it costs)."""

    def __init__(self, metrics: JoinPhaseMetrics | None) -> None:
        self._metrics = metrics
        self.phases: dict[str, float] = {}
        self.events: int | None = None  # distinct state and auth chain events answered

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - start
            self.phases[name] = self.phases.get(name, 0.0) + took
            if self._metrics is not None:
                self._metrics.seconds.labels(name).observe(took)

    def summary(self) -> str:
        out = " ".join(f"{k}={v:.3f}s" for k, v in self.phases.items())
        return f"{out} events={self.events}" if self.events is not None else out


def _error_of(e: FederationHttpError) -> MatrixError:
    """A resident server's 4xx answer, relayed to our client."""
    body = e.body if isinstance(e.body, dict) else {}
    errcode = body.get("errcode") if isinstance(body.get("errcode"), str) else Codes.UNKNOWN
    message = body.get("error") if isinstance(body.get("error"), str) else "Refused"
    return MatrixError(e.code, str(message)[:500], str(errcode)[:64])


class RemoteMembership:
    def __init__(self, server_name: str, signing_key: Any, clock: Any, client: Any,
                 keyring: Any, ingest: Any, stores: Any, servlets: MembershipServlets,
                 is_blocked: Any) -> None:
        self._server_name = server_name
        self._key = signing_key
        self._clock = clock
        self._client = client
        self._keyring = keyring
        self._ingest = ingest
        self._events = stores.events
        self._rooms = stores.rooms
        self._members = stores.room_members
        self._servlets = servlets
        self.servlets = servlets  # homeserver/replication/remote_persist.py sets its hooks
        # homeserver/handlers/partial_state.py (set by register_membership) and
        # federation.partial_state_joins: send_join asks with omit_members.
        self.partial_state: PartialStateHandler | None = None
        self.partial_state_joins = False
        # With event persisters (homeserver/replication/remote_partial_state.py): the
        # same steps for a room another process writes, run by its writer.
        self.remote_partial_state: Any = None
        self._is_blocked = is_blocked
        self.metrics: JoinPhaseMetrics | None = None  # set by register_membership

    # ---- candidates and the make_* round

    async def _candidates(self, user_id: str, room_id: str, servers: list[str]) -> list[str]:
        out: list[str] = []
        record = await self._members.get_membership(user_id, room_id)
        extra = []
        if record is not None and record.membership in ("invite", "knock"):
            event = await self._events.get_event(record.event_id)
            if event is not None:
                extra.append(domain_of(event.sender))
                # And the servers of the room's state we were given (v12 room ids name
                # no server; a knock's only other lead).
                unsigned = event.pdu.get("unsigned")
                given = unsigned.get(f"{record.membership}_room_state") \
                    if isinstance(unsigned, dict) else None
                for s in given if isinstance(given, list) else []:
                    if isinstance(s, dict) and isinstance(s.get("sender"), str):
                        extra.append(domain_of(s["sender"]))
        room_server = domain_of(room_id)
        for server in [*servers, *extra, *([room_server] if room_server else [])]:
            if server and server != self._server_name and server not in out \
                    and not await self._is_blocked(server):
                out.append(server)
        return out[:20]

    async def _make(self, kind: str, user_id: str, room_id: str,
                    servers: list[str]) -> tuple[str, RoomVersion, JsonDict]:
        """(resident server, room version, template) from the first server that answers."""
        if not servers:
            raise MatrixError(404, "No known servers to join the room through",
                              Codes.NOT_FOUND)
        args = {"ver": list(KNOWN_ROOM_VERSIONS)} if kind != "leave" else None
        last: str = "no server answered"
        for server in servers:
            try:
                answer = await self._client.get_json(
                    server, f"{FED}/v1/make_{kind}/{q(room_id)}/{q(user_id)}", args)
            except FederationHttpError as e:
                if 400 <= e.code < 500:
                    raise _error_of(e) from None
                last = f"{server} answered {e.code}"
                continue
            except FederationError as e:
                last = f"{server}: {e}"
                continue
            try:
                version, template = self._check_template(kind, user_id, room_id, answer)
            except MatrixError as e:
                last = f"{server}: {e}"
                continue
            return server, version, template
        logger.info("make_%s for %s failed: %s", kind, room_id, last)
        raise MatrixError(502, f"Failed to {kind} the room through any server",
                          Codes.UNKNOWN)

    @staticmethod
    def _check_template(kind: str, user_id: str, room_id: str,
                        answer: Any) -> tuple[RoomVersion, JsonDict]:
        if not isinstance(answer, dict) or not isinstance(answer.get("event"), dict):
            raise MatrixError(502, "bad make answer", Codes.UNKNOWN)
        version = get_room_version(answer.get("room_version", "1"))
        if version is None:
            raise MatrixError(400, "Unsupported room version", "M_INCOMPATIBLE_ROOM_VERSION")
        template = answer["event"]
        content = template.get("content")
        if template.get("room_id") != room_id or template.get("type") != "m.room.member" \
                or template.get("sender") != user_id or template.get("state_key") != user_id \
                or not isinstance(content, dict) or content.get("membership") != kind:
            raise MatrixError(502, "bad template", Codes.UNKNOWN)
        return version, template

    def _sign(self, version: RoomVersion, template: JsonDict, content: JsonDict) -> Event:
        pdu = {k: template[k] for k in _TEMPLATE_KEYS if k in template}
        pdu["content"] = {**{k: v for k, v in content.items() if k not in _RESIDENT_KEYS},
                          **{k: v for k, v in template["content"].items()
                             if k in _RESIDENT_KEYS}}
        pdu["origin"] = self._server_name
        pdu["origin_server_ts"] = self._clock.time_msec()
        if version.event_format == EventFormat.V1:
            pdu["event_id"] = f"${secrets.token_urlsafe(18)}:{self._server_name}"
        signed = sign_event(pdu, self._server_name, self._key, version)
        return Event(compute_event_id(signed, version), signed, version)

    async def _ensure_room(self, room_id: str, version: RoomVersion, creator: str) -> None:
        known = await self._rooms.get_room_version(room_id)
        if known is None:
            await self._rooms.store_room(room_id, version.identifier, creator, False,
                                         self._clock.time_msec())
        elif known != version.identifier:
            raise MatrixError(502, "The resident server names another room version",
                              Codes.UNKNOWN)

    # ---- join

    async def join(self, user_id: str, room_id: str, servers: list[str],
                   content: JsonDict) -> None:
        timer = JoinTimer(self.metrics)
        try:
            await self._join(timer, user_id, room_id, servers, content)
        finally:
            logger.debug("join of %s: %s", room_id, timer.summary())

    async def _join(self, timer: JoinTimer, user_id: str, room_id: str, servers: list[str],
                    content: JsonDict) -> None:
        candidates = await self._candidates(user_id, room_id, servers)
        with timer.phase("make_join"):
            resident, version, template = await self._make("join", user_id, room_id,
                                                            candidates)
        event = self._sign(version, template, content)
        # Faster joins: the resident may leave members out; they come in the background
        # (resynced by the room's writer, which holds the room's queue).
        omit = self.partial_state_joins and self._partial_of(room_id) is not None
        try:
            with timer.phase("send_join"):
                answer = await self._client.put_json(
                    resident, f"{FED}/v2/send_join/{q(room_id)}/{q(event.event_id)}",
                    event.pdu, {"omit_members": "true"} if omit else None)
        except FederationHttpError as e:
            if 400 <= e.code < 500:
                raise _error_of(e) from None
            raise MatrixError(502, "The resident server failed the join", Codes.UNKNOWN) from e
        except FederationError as e:
            raise MatrixError(502, "The resident server could not be reached",
                              Codes.UNKNOWN) from e
        if not isinstance(answer, dict) or not isinstance(answer.get("state"), list) \
                or not isinstance(answer.get("auth_chain"), list) \
                or len(answer["state"]) + len(answer["auth_chain"]) > MAX_STATE_EVENTS:
            raise MatrixError(502, "Bad send_join answer", Codes.UNKNOWN)
        join = event
        returned = answer.get("event")
        if isinstance(returned, dict):
            # Co-signed by the authorising server (restricted rooms): the same event.
            try:
                cosigned = parse_pdu(returned, version, room_id)
                if cosigned.event_id == event.event_id:
                    join = cosigned
            except PduError:
                pass
        partial: list[str] | None = None
        if omit and answer.get("members_omitted") is True:
            given = answer.get("servers_in_room")
            partial = [s for s in given[:MAX_SERVERS_IN_ROOM] if isinstance(s, str)
                       and 0 < len(s) <= 255] if isinstance(given, list) else []
        await self._persist_joined_state(resident, room_id, version, answer, join,
                                         partial, timer)

    async def _persist_joined_state(self, resident: str, room_id: str, version: RoomVersion,
                                    answer: JsonDict, join: Event,
                                    partial: list[str] | None = None,
                                    timer: JoinTimer | None = None) -> None:
        """Store the answer's state and auth chain, then the join on that state.
        ``partial``: the answer left members out (these are its servers_in_room): the
        room is marked partial-state before the join lands and resynced after."""
        join_id = join.event_id
        # (``partial`` is only given when _partial_of had a handler to ask for it.)
        handler = self._partial_of(room_id) if partial is not None else None
        if handler is not None:
            await handler.mark(room_id, join_id, resident, partial)
        try:
            await self._persist_answer(resident, room_id, version, answer, join,
                                       timer or JoinTimer(None))
        except BaseException:
            if handler is not None:
                await handler.unmark(room_id)
            raise
        if handler is not None:
            handler.resync_soon(PartialStateRoom(room_id, join_id, resident,
                                                 tuple(partial or ())))

    def _partial_of(self, room_id: str) -> Any:
        """Who runs the partial-state steps of the room: this process's handler, or
        the room's writer (event persisters); None without partial-state joins."""
        owns = self._ingest.persister.owns_room
        if owns is None or owns(room_id):
            return self.partial_state
        return self.remote_partial_state

    async def _persist_answer(self, resident: str, room_id: str, version: RoomVersion,
                              answer: JsonDict, join: Event, timer: JoinTimer) -> None:
        ingest = self._ingest
        with timer.phase("parse"):
            # Each PDU parsed (ids, canonical JSON) once; the auth chain first, as the
            # state's events that are in both are the same event.
            state_ids: set[str] = set()
            by_id: dict[str, Event] = {}
            failed = 0
            creator = ""
            for i, pdu in enumerate([*answer["auth_chain"], *answer["state"]]):
                if not isinstance(pdu, dict):
                    continue
                try:
                    # The answer's JSON is used for nothing else: not copied again.
                    ev = parse_pdu(pdu, version, room_id, copy_values=False)
                except PduError:
                    failed += 1
                    continue
                by_id.setdefault(ev.event_id, ev)
                if i >= len(answer["auth_chain"]):
                    state_ids.add(ev.event_id)
                    if ev.type == "m.room.create" and ev.state_key == "":
                        creator = ev.sender
        if not creator:
            raise MatrixError(502, "The room's state has no create event", Codes.UNKNOWN)
        await self._ensure_room(room_id, version, creator)
        parsed = list(by_id.values())
        timer.events = len(parsed)
        try:
            with timer.phase("keys"):
                await ingest.prefetch_keys(resident, [*parsed, join])
            with timer.phase("signatures"):
                checked, dropped = await ingest.check_events(resident, room_id, parsed,
                                                             PersistKind.OUTLIER)
            with timer.phase("persist_state"):
                outcomes = await ingest.persister.persist_remote(
                    room_id, checked, PersistKind.OUTLIER) if checked else []
            good = {o.event_id for o in outcomes if o.status in ("outlier", "known")}
            state = {ev.state_pair: ev.event_id for ev in parsed
                     if ev.event_id in state_ids and ev.event_id in good and ev.is_state()}
            if dropped or failed:
                logger.info("join of %s: %d state/auth events dropped", room_id,
                            len(dropped) + failed)
            with timer.phase("persist_join"):
                outcomes, dropped = await ingest.receive_events(
                    resident, room_id, [join], PersistKind.REMOTE, state_before=state)
        except MissingEventsError as e:
            raise MatrixError(502, f"The room's auth chain is incomplete ({e.what})",
                              Codes.UNKNOWN) from None
        if dropped or not outcomes or outcomes[0].status not in ("accepted", "known"):
            why = next(iter(dropped.values()), None) or (outcomes[0].reason if outcomes
                                                         else None)
            logger.warning("join of %s not accepted here: %s", room_id, why)
            raise MatrixError(502, "The join could not be stored", Codes.UNKNOWN)

    # ---- knock and leave (held out of band)

    async def knock(self, user_id: str, room_id: str, servers: list[str],
                    content: JsonDict) -> None:
        candidates = await self._candidates(user_id, room_id, servers)
        resident, version, template = await self._make("knock", user_id, room_id, candidates)
        if not version.knock:
            raise MatrixError(400, "This room version does not support knocking",
                              "M_INCOMPATIBLE_ROOM_VERSION")
        event = self._sign(version, template, content)
        answer = await self._send(resident, "v1/send_knock", room_id, event)
        state = answer.get("knock_room_state") if isinstance(answer, dict) else None
        pdu = dict(event.pdu)
        pdu["unsigned"] = {"knock_room_state": [s for s in (state or [])[:50]
                                                if isinstance(s, dict)]}
        await self._servlets.store_out_of_band(Event(event.event_id, pdu, version), version)

    async def leave(self, user_id: str, room_id: str, content: JsonDict) -> None:
        candidates = await self._candidates(user_id, room_id, [])
        resident, version, template = await self._make("leave", user_id, room_id, candidates)
        event = self._sign(version, template, content)
        await self._send(resident, "v2/send_leave", room_id, event)
        await self._servlets.store_out_of_band(event, version)

    async def _send(self, resident: str, what: str, room_id: str, event: Event) -> Any:
        try:
            return await self._client.put_json(
                resident, f"{FED}/{what}/{q(room_id)}/{q(event.event_id)}", event.pdu)
        except FederationHttpError as e:
            if 400 <= e.code < 500:
                raise _error_of(e) from None
            raise MatrixError(502, "The resident server failed the request",
                              Codes.UNKNOWN) from e
        except FederationError as e:
            raise MatrixError(502, "The resident server could not be reached",
                              Codes.UNKNOWN) from e

    # ---- invites out

    async def invite_validator(self, event: Event, snap: RoomSnapshot) -> None:
        """An event validator (run after the auth rules, before the event is stored):
        an invite of another server's user goes to that server first, which co-signs
        it; its signature is added to the event about to be stored."""
        invitee = event.state_key
        if event.type != "m.room.member" or event.membership != "invite" or invitee is None:
            return
        server = domain_of(invitee)
        if server == self._server_name:
            return
        state_ids = [snap.state_ids[(t, "")] for t in STRIPPED_STATE_TYPES
                     if (t, "") in snap.state_ids]
        sender_member = snap.state_ids.get(("m.room.member", event.sender))
        if sender_member is not None:
            state_ids.append(sender_member)
        found = await self._events.get_events(state_ids)
        body = {"room_version": event.room_version.identifier, "event": event.pdu,
                "invite_room_state": stripped(found[i] for i in state_ids if i in found)}
        try:
            answer = await self._client.put_json(
                server, f"{FED}/v2/invite/{q(event.room_id)}/{q(event.event_id)}", body)
        except FederationHttpError as e:
            if 400 <= e.code < 500:
                raise _error_of(e) from None
            raise MatrixError(502, "The invitee's server failed the invite",
                              Codes.UNKNOWN) from e
        except FederationError as e:
            raise MatrixError(502, "The invitee's server could not be reached",
                              Codes.UNKNOWN) from e
        returned = answer.get("event") if isinstance(answer, dict) else None
        try:
            signed = parse_pdu(returned, event.room_version, event.room_id)
            if signed.event_id != event.event_id:
                raise PduError("another event")
            probe = Event(signed.event_id, signed.pdu, signed.room_version)
            await check_signatures(self._keyring, probe, server)
        except PduError as e:
            raise MatrixError(502, f"The invitee's server answered a bad event: {e.reason}",
                              Codes.UNKNOWN) from None
        theirs = signed.pdu.get("signatures", {}).get(server)
        if isinstance(theirs, dict):
            event.pdu.setdefault("signatures", {})[server] = dict(theirs)


def register_membership(config: Any, clock: Any, db: Any, events: Any, router: Any,
                        local_keys: Any, keyring: Any, client: Any, ingest: Any,
                        deps: Any, sender: Any = None) -> Any:
    """Registers the resident routes and sets the membership handler's remote hooks;
    the :class:`RemoteMembership` (None without rooms or ingest)."""
    if ingest is None or deps is None or deps.rooms is None or deps.stores is None:
        return None
    from homeserver.handlers.server_blocks import ServerBlocks

    stores = deps.stores
    blocks = ServerBlocks(config.server_name, clock, stores.blocked_servers, events,
                          config.federation_blocked_servers)
    oob = OutOfBandStore(db, stores.events.codec)
    membership = deps.rooms.membership
    servlets = MembershipServlets(config.server_name, local_keys.signing_key, clock, keyring,
                                  ingest, stores, membership, oob, blocks.is_blocked,
                                  deps.notifier)
    if sender is not None:
        servlets.forward = sender.sender.forward_event
    servlets.register(router)
    remote = RemoteMembership(config.server_name, local_keys.signing_key, clock, client,
                              keyring, ingest, stores, servlets, blocks.is_blocked)
    membership.remote_join = remote.join
    membership.remote_knock = remote.knock
    membership.remote_leave = remote.leave
    deps.rooms.event_creation.event_validators.append(remote.invite_validator)
    remote.partial_state = _partial_state(config, clock, db, stores, ingest, blocks, deps)
    remote.partial_state_joins = config.federation.partial_state_joins
    registry = getattr(deps, "metrics_registry", None)
    if registry is not None:
        remote.metrics = JoinPhaseMetrics(registry)
    return remote


def _partial_state(config: Any, clock: Any, db: Any, stores: Any, ingest: Any, blocks: Any,
                   deps: Any) -> PartialStateHandler:
    """The resync of rooms joined with partial state, wired to the history fetcher (the
    ingest's, set by federation/history.py) and resumed for rooms a restart left."""
    handler = PartialStateHandler(config.server_name, clock,
                                  PartialStateStore(db, stores.events.codec), stores.events,
                                  ingest.persister, deps.notifier)

    async def fetch_state(server: str, room_id: str, event_id: str) -> Any:
        fetcher = ingest.fetcher
        return await fetcher.state_before(server, room_id, event_id) if fetcher else None

    handler.fetch_state = fetch_state
    handler.is_blocked = blocks.is_blocked
    deps.rooms.pagination.await_full_state = handler.wait_for_full_state

    def failed(f: Any) -> None:
        logger.error("resuming partial-state resyncs failed: %s", f.getErrorMessage())
    defer.ensureDeferred(handler.start()).addErrback(failed)
    return handler
