"""Application services' namespaces and what they decide: which persisted events a
service is sent, who may register or create an alias in an exclusive namespace, a
service registering its users, asking a service about an unknown user or alias, the
third-party protocol lookups it answers, and the room lists it publishes."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import quote

from twisted.internet import defer

from homeserver.appservice.api import AppserviceApi, AppserviceError
from homeserver.appservice.auth import AppserviceTokens, app_service_of, request_token
from homeserver.appservice.config import ApplicationService
from homeserver.appservice.scheduler import AppserviceScheduler
from homeserver.audit import context as audit_context
from homeserver.clock import Clock
from homeserver.handlers.event_fanout import PersistedEvent, PersistKind
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import check_localpart, split_user_id, user_id
from storage.stores.appservice import AppserviceStore
from storage.stores.room_aliases import RoomAliasStore
from storage.stores.room_members import RoomMemberStore
from storage.stores.users import UserInUseError, UserStore

logger = logging.getLogger(__name__)

MEMBER = "m.room.member"
MAX_FIELD_LEN = 1024
# A user a service said it does not provide is not asked about again for this long.
UNKNOWN_USER_RETRY_MS = 60_000
# A presence change is looked up in at most this many of the user's rooms.
MAX_EPHEMERAL_ROOMS = 500
# Start-up replay reads events in batches of this many; the scan position is written
# every this many seconds (the position the fan-out had reached one interval before).
REPLAY_BATCH = 500
CHECKPOINT_INTERVAL_S = 5.0
MAX_UNKNOWN_USERS_REMEMBERED = 10_000


def _exclusive() -> MatrixError:
    return MatrixError(400, "This user ID is reserved by an application service",
                       Codes.EXCLUSIVE)


class AppserviceHandler:
    def __init__(self, server_name: str, services: list[ApplicationService], clock: Clock,
                 store: AppserviceStore, users: UserStore, members: RoomMemberStore,
                 aliases: RoomAliasStore, api: AppserviceApi,
                 scheduler: AppserviceScheduler) -> None:
        self.server_name = server_name
        self.services = services
        self.by_id = {s.id: s for s in services}
        self._clock = clock
        self._store = store
        self._users = users
        self._members = members
        self._aliases = aliases
        self.api = api
        self.scheduler = scheduler
        self.tokens = AppserviceTokens(services)
        # (service id, user id) -> when the service last said it does not provide them.
        self._not_provided: dict[tuple[str, str], int] = {}
        self.events: Any = None  # EventStore, set at build (the replay reads events)
        self._seen = 0  # highest stream position the fan-out brought
        self._checkpoint_due = 0
        self._written = 0
        self._timer: Any = None

    # -- start-up -----------------------------------------------------------------

    async def ensure_senders(self) -> None:
        """Create each service's sender user if missing (as Synapse does at start-up)."""
        for svc in self.services:
            if await self._users.user_exists(svc.sender):
                continue
            try:
                await self._users.create_user(svc.sender, None, self._clock.time_msec(),
                                              displayname=split_user_id(svc.sender)[0])
            except UserInUseError:
                pass

    # -- HS → AS: which events go where ----------------------------------------------

    async def interested_services(self, record: PersistedEvent) -> list[str]:
        ev = record.event
        out = []
        members: list[str] | None = None
        aliases: list[str] | None = None
        for svc in self.services:
            if svc.url is None:
                continue
            if (svc.is_interested_in_user(ev.sender) or svc.is_interested_in_room(ev.room_id)
                    or (ev.type == MEMBER and isinstance(ev.state_key, str)
                        and svc.is_interested_in_user(ev.state_key))):
                out.append(svc.id)
                continue
            if svc.aliases:
                if aliases is None:
                    aliases = await self._aliases.aliases_for_room(ev.room_id)
                if any(svc.is_interested_in_alias(a) for a in aliases):
                    out.append(svc.id)
                    continue
            if members is None:
                members = [m.user_id for m in await self._members.members_of_room(
                    ev.room_id, ("join", "invite"))]
            if any(svc.is_interested_in_user(m) for m in members):
                out.append(svc.id)
        return out

    async def event_persisted(self, record: PersistedEvent) -> None:
        """Fan-out subscriber: queue the event for every interested service, durably,
        then wake their senders."""
        if record.kind in (PersistKind.OUTLIER, PersistKind.BACKFILLED):
            return
        if record.event.internal.rejected_reason:
            return
        self._seen = max(self._seen, record.position)
        ids = await self.interested_services(record)
        if not ids:
            return
        await self._store.enqueue(ids, record.event.event_id, record.position)
        for as_id in ids:
            self.scheduler.kick(as_id)

    # -- crash safety: replay and checkpoints ---------------------------------------

    async def replay(self) -> None:
        """Start-up: look again at the events persisted after the last checkpoint, so an
        event stored just before a crash, whose fan-out never ran, still reaches its
        services. Nothing a service acknowledged or has in flight is queued again, and
        the queue itself ignores what it holds already."""
        if not any(s.url is not None for s in self.services) or self.events is None:
            return
        position = await self._store.get_scan_position()
        if position is None:  # first start: history from before is not sent
            position = await self.events.max_stream_ordering()
        handled = {s.id: await self._store.handled_up_to(s.id) for s in self.services
                   if s.url is not None}
        while True:
            rows = await self._store.events_after(position, REPLAY_BATCH)
            found = await self.events.get_events(eid for _, eid in rows)
            for ordering, event_id in rows:
                event = found.get(event_id)
                if event is None:
                    continue
                record = PersistedEvent(event, ordering, {}, PersistKind.LOCAL, frozenset())
                ids = [a for a in await self.interested_services(record)
                       if ordering > handled.get(a, 0)]
                await self._store.enqueue(ids, event_id, ordering)
            if rows:
                position = rows[-1][0]
            if len(rows) < REPLAY_BATCH:
                break
        await self._store.set_scan_position(position)
        self._seen = self._checkpoint_due = self._written = position
        self._timer = self._clock.call_later(CHECKPOINT_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        """Checkpoint the position the fan-out had reached one interval ago (a room's
        records reach subscribers in order, within moments, so all before it are
        queued)."""
        self._timer = self._clock.call_later(CHECKPOINT_INTERVAL_S, self._tick)
        due, self._checkpoint_due = self._checkpoint_due, self._seen
        if due > self._written:
            self._written = due
            d = defer.ensureDeferred(self._store.set_scan_position(due))
            d.addErrback(lambda f: logger.warning("appservice scan checkpoint failed: %s",
                                                  f.getErrorMessage()))

    def stop_checkpoints(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- HS → AS: ephemeral events (MSC2409, receive_ephemeral) -------------------------

    def room_edu(self, edu: dict[str, Any]) -> None:
        """A typing or receipt EDU of one room: queued for each ``receive_ephemeral``
        service interested in the room. Runs in the background: the typing or receipt
        request that caused it is not held up by the lookups."""
        self._route_later(edu, [edu["room_id"]], None)

    def presence_edu(self, edu: dict[str, Any], rooms: list[str]) -> None:
        """A presence change: for services interested in the user or in a room the user
        shares with them."""
        self._route_later(edu, rooms, edu.get("sender"))

    def _route_later(self, edu: dict[str, Any], rooms: list[str], sender: str | None) -> None:
        if not any(s.receive_ephemeral and s.url is not None for s in self.services):
            return
        d = defer.ensureDeferred(self._route_ephemeral(edu, rooms, sender))
        d.addErrback(lambda f: logger.warning("appservice ephemeral routing failed: %s",
                                              f.getErrorMessage()))

    async def _route_ephemeral(self, edu: dict[str, Any], rooms: list[str],
                               sender: str | None) -> None:
        members: dict[str, list[str]] = {}
        aliases: dict[str, list[str]] = {}
        for svc in self.services:
            if not svc.receive_ephemeral or svc.url is None:
                continue
            if sender is not None and svc.is_interested_in_user(sender):
                self.scheduler.add_ephemeral(svc.id, edu)
                continue
            for room_id in rooms[:MAX_EPHEMERAL_ROOMS]:
                if svc.is_interested_in_room(room_id):
                    break
                if svc.aliases:
                    if room_id not in aliases:
                        aliases[room_id] = await self._aliases.aliases_for_room(room_id)
                    if any(svc.is_interested_in_alias(a) for a in aliases[room_id]):
                        break
                if room_id not in members:
                    members[room_id] = [m.user_id for m in await self._members.members_of_room(
                        room_id, ("join",))]
                if any(svc.is_interested_in_user(m) for m in members[room_id]):
                    break
            else:
                continue
            self.scheduler.add_ephemeral(svc.id, edu)

    # -- exclusive namespaces ---------------------------------------------------------

    def _current_service(self) -> ApplicationService | None:
        ctx = audit_context.current()
        req = getattr(ctx, "request", None) if ctx is not None else None
        as_id = app_service_of(getattr(req, "requester", None))
        return self.by_id.get(as_id) if as_id else None

    def check_user_not_exclusive(self, uid: str) -> None:
        """Registration hook: an exclusive user namespace is refused to anyone but the
        service that owns it (400 M_EXCLUSIVE)."""
        if any(s.is_exclusive_user(uid) for s in self.services):
            raise _exclusive()

    async def appservice_alias(self, alias: str) -> bool:
        """Alias creation hook: an alias in an exclusive namespace only for its service
        (400 M_EXCLUSIVE otherwise); True when the requesting service's namespace has
        the alias (it may then alias a room it is not in, as Synapse)."""
        svc = self._current_service()
        if any(s is not svc and s.is_exclusive_alias(alias) for s in self.services):
            raise MatrixError(400, "This alias is reserved by an application service",
                              Codes.EXCLUSIVE)
        return svc is not None and svc.is_interested_in_alias(alias)

    # -- AS registration ---------------------------------------------------------------

    async def register_user(self, svc: ApplicationService, localpart: str) -> str:
        """``m.login.application_service`` registration of a user in ``svc``'s namespace."""
        localpart = localpart.lower()
        if localpart.startswith("@") and ":" in localpart:  # a full user id, as some ASes send
            localpart = split_user_id(localpart)[0]
        # '_' is refused to people (check_localpart) but is what bridges' puppets use.
        check_localpart(localpart[1:] if localpart.startswith("_") and len(localpart) > 1
                        else localpart, self.server_name)
        uid = user_id(localpart, self.server_name)
        if not svc.is_interested_in_user(uid):
            raise MatrixError(400, "Invalid user localpart for this application service.",
                              Codes.EXCLUSIVE)
        if any(s is not svc and s.is_exclusive_user(uid) for s in self.services):
            raise _exclusive()
        try:
            await self._users.create_user(uid, None, self._clock.time_msec(),
                                          displayname=localpart)
        except UserInUseError as e:
            raise MatrixError(400, "User ID already taken.", Codes.USER_IN_USE) from e
        return uid

    def login_user(self, body: dict[str, Any]) -> str | None:
        """``m.login.application_service`` login: the user the body names, when the
        request carries an ``as_token`` whose namespace holds that user."""
        ctx = audit_context.current()
        raw = getattr(getattr(ctx, "request", None), "raw", None)
        svc = self.tokens.find(request_token(raw)) if raw is not None else None
        if svc is None:
            return None
        ident = body.get("identifier")
        user = ident.get("user") if isinstance(ident, dict) and ident.get(
            "type") == "m.id.user" else body.get("user")
        if not isinstance(user, str) or not user:
            return None
        uid = user if user.startswith("@") else user_id(user.lower(), self.server_name)
        return uid if svc.is_interested_in_user(uid) else None

    # -- asking services ----------------------------------------------------------------

    async def query_alias(self, alias: str) -> bool:
        """An unknown local alias in a service's namespace: ask the service, which may
        create it meanwhile. True if one said it has it."""
        for svc in self.services:
            if svc.url is not None and svc.is_interested_in_alias(alias):
                if await self.api.query_alias(svc, alias):
                    return True
        return False

    async def query_user(self, uid: str) -> bool:
        """An unknown local user in a service's namespace: ask the service."""
        for svc in self.services:
            if svc.url is not None and svc.is_interested_in_user(uid):
                if await self.api.query_user(svc, uid) and await self._users.user_exists(uid):
                    return True
        return False

    async def ask_about_unknown_users(self, svc: ApplicationService,
                                      events: list[dict[str, Any]]) -> None:
        """Before a transaction goes to ``svc``: each local user its events name (the
        sender, a membership's target) who has no account but is in the service's
        namespace is asked of the service, which may register them first (as Synapse's
        ``_check_user_exists``, SyTest's "Inviting an AS-hosted user asks the AS
        server"). A user the service does not provide is not asked again for a minute."""
        suffix = ":" + self.server_name
        named: list[str] = []
        for ev in events:
            named.append(ev.get("sender", ""))
            if ev.get("type") == MEMBER:
                named.append(ev.get("state_key") or "")
        now = self._clock.time_msec()
        for uid in dict.fromkeys(named):
            if not (isinstance(uid, str) and uid.endswith(suffix)
                    and svc.is_interested_in_user(uid)):
                continue
            asked = self._not_provided.get((svc.id, uid))
            if asked is not None and now - asked < UNKNOWN_USER_RETRY_MS:
                continue
            if await self._users.user_exists(uid):
                continue
            if await self.api.query_user(svc, uid):
                self._not_provided.pop((svc.id, uid), None)
                continue
            if len(self._not_provided) >= MAX_UNKNOWN_USERS_REMEMBERED:
                self._not_provided.clear()
            self._not_provided[(svc.id, uid)] = now

    def is_exempt_from_rate_limits(self, uid: str) -> bool:
        return any(not s.rate_limited and s.is_interested_in_user(uid) for s in self.services)

    async def ping(self, svc: ApplicationService, txn_id: str | None) -> int:
        """POST the service's /ping; its round trip in ms (502/504 M_… on failure)."""
        if svc.url is None:
            raise MatrixError(400, "The appservice doesn't have a URL configured",
                              "M_URL_NOT_SET")
        real_start = time.monotonic()
        try:
            await self.api.ping(svc, txn_id)
        except AppserviceError as e:
            if e.code is None:
                raise MatrixError(504, "Connection to the application service failed",
                                  "M_CONNECTION_FAILED") from e
            raise MatrixError(502, "The application service returned an error",
                              "M_BAD_STATUS", status=e.code) from e
        return int((time.monotonic() - real_start) * 1000)

    # -- third-party protocols ------------------------------------------------------------

    async def protocols(self, only: str | None = None) -> dict[str, Any]:
        """Protocol metadata from every service that names the protocol; each instance
        gets ``instance_id`` ``<service id>|<network id>`` (the per-network room list)."""
        out: dict[str, Any] = {}
        for svc in self.services:
            for proto in svc.protocols:
                if only is not None and proto != only or svc.url is None:
                    continue
                try:
                    info = await self.api.thirdparty(svc, "protocol/" + _q(proto))
                except AppserviceError as e:
                    logger.info("appservice %s: protocol %s query failed: %s", svc.id, proto, e)
                    continue
                if not isinstance(info, dict):
                    continue
                instances = info.get("instances")
                clean = []
                for inst in instances if isinstance(instances, list) else []:
                    if isinstance(inst, dict):
                        inst = dict(inst)
                        inst["instance_id"] = f"{svc.id}|{inst.get('network_id', '')}"
                        clean.append(inst)
                info = {**info, "instances": clean}
                if proto in out:
                    out[proto]["instances"].extend(clean)
                else:
                    out[proto] = info
        return out

    async def lookup(self, kind: str, protocol: str | None,
                     fields: dict[str, str]) -> list[Any]:
        """``user`` / ``location`` lookups: the concatenated answers of the services
        (for one protocol, or reverse lookups by ``userid`` / ``alias`` for all)."""
        out: list[Any] = []
        for svc in self.services:
            if svc.url is None or (protocol is not None and protocol not in svc.protocols):
                continue
            path = kind + ("/" + _q(protocol) if protocol is not None else "")
            try:
                answer = await self.api.thirdparty(svc, path, fields)
            except AppserviceError as e:
                logger.info("appservice %s: %s lookup failed: %s", svc.id, kind, e)
                continue
            if isinstance(answer, list):
                out.extend(a for a in answer if isinstance(a, dict))
        return out

    # -- per-network public room lists ------------------------------------------------------

    async def set_listed(self, as_id: str, network_id: str, room_id: str, listed: bool) -> None:
        await self._store.set_room_listed(as_id, network_id, room_id, listed)

    async def network_rooms(self, instance_id: str | None, all_networks: bool) -> list[str]:
        """Rooms on one network's list (``instance_id`` ``<as id>|<network>``) or on
        every network's (``all_networks``)."""
        if all_networks:
            return await self._store.listed_rooms()
        if instance_id is None or "|" not in instance_id:
            return []
        as_id, network = instance_id.split("|", 1)
        return await self._store.listed_rooms(as_id, network)


def _q(value: str) -> str:
    return quote(value, safe="")
