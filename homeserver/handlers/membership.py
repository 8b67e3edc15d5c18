"""Membership changes: join, invite, leave, kick, ban, unban, knock, forget, and
leaving every room on deactivation.

Whether a change is allowed is decided by the event authorization rules (the one
module every event goes through); this handler only builds the right member event.
For joins to ``restricted`` / ``knock_restricted`` rooms that means choosing the
authorising user (``join_authorised_via_users_server``) the rules then check.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from twisted.internet import defer

from homeserver.events.auth import AUTHORISING_USER, JOIN_RULES
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import (
    CREATE,
    POWER_LEVELS,
    domain_of,
    get_named_level,
    get_user_power_level,
)
from homeserver.events.room_versions import RoomVersion
from homeserver.handlers.event_creation import EventCreationHandler, RoomSnapshot
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import check_room_alias, split_user_id
from storage.stores.profiles import ProfileStore
from storage.stores.room_aliases import RoomAliasStore
from storage.stores.room_members import RoomMemberStore
from storage.stores.users import UserStore

logger = logging.getLogger(__name__)

# The spec's error when no local user may vouch for a restricted join (not yet in Codes).
UNABLE_TO_GRANT_JOIN = "M_UNABLE_TO_GRANT_JOIN"
ROOM_MEMBERSHIP_CONDITION = "m.room_membership"
# Member event content a client may not choose on a join: what the event is, who
# vouched for it, and the request's own parameters.
GUEST_ACCESS = "m.room.guest_access"
CAN_JOIN = "can_join"
MAX_SERVERS = 20  # candidate resident servers tried for a remote join or knock
SERVER_MEMBER_KEYS = frozenset({"membership", AUTHORISING_USER, "third_party_signed",
                                "reason"})


class MembershipHandler:
    def __init__(
        self,
        server_name: str,
        creation: EventCreationHandler,
        members: RoomMemberStore,
        profiles: ProfileStore,
        aliases: RoomAliasStore,
        users: UserStore | None = None,
    ) -> None:
        self._server_name = server_name
        self._creation = creation
        self._members = members
        self._profiles = profiles
        self._aliases = aliases
        self._users = users
        # Plugin gates (plugins/host.py), raising a MatrixError to refuse:
        # may_join(user_id, room_id, is_invited), may_invite(inviter, invitee, room_id).
        self.may_join: Callable[[str, str, bool], Awaitable[None]] | None = None
        self.may_invite: Callable[[str, str, str], Awaitable[None]] | None = None
        # Blocked remote servers (homeserver/handlers/server_blocks.py): async fn(invitee)
        # raising 403 when the invitee's server is blocked.
        self.check_invitee: Callable[[str], Awaitable[None]] | None = None
        # Application services (homeserver/appservice/): asked about an unknown local
        # alias in their namespace, which they may create meanwhile (True: ask again).
        self.query_alias: Callable[[str], Awaitable[bool]] | None = None
        # Blocked rooms (homeserver/handlers/admin_rooms.py): raises M_FORBIDDEN for a
        # room an admin blocked; asked before any membership but leave and ban.
        self.check_room_blocked: Callable[[str], Awaitable[None]] | None = None
        # Federation (federation/remote_queries.py): another server's alias ->
        # {"room_id", "servers"} or None.
        self.remote_alias: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None
        # Federation (federation/remote_join.py): membership of a room this server holds
        # no state of, through a resident server. remote_join(user, room, servers,
        # content), remote_knock(user, room, servers, content), remote_leave(user, room,
        # content) (rejecting an invite, withdrawing a knock).
        self.remote_join: Callable[[str, str, list[str], dict[str, Any]],
                                   Awaitable[None]] | None = None
        self.remote_knock: Callable[[str, str, list[str], dict[str, Any]],
                                    Awaitable[None]] | None = None
        self.remote_leave: Callable[[str, str, dict[str, Any]], Awaitable[None]] | None = None

    async def _is_guest(self, user_id: str) -> bool:
        if self._users is None:
            return False
        record = await self._users.get_user(user_id)
        return record is not None and record.is_guest

    async def resolve_room(self, room_id_or_alias: str) -> str:
        if room_id_or_alias.startswith("#"):
            _, server = check_room_alias(room_id_or_alias)
            found = await self._aliases.get_alias(room_id_or_alias)
            if found is None and server == self._server_name and self.query_alias is not None \
                    and await self.query_alias(room_id_or_alias):
                found = await self._aliases.get_alias(room_id_or_alias)
            if found is None and server != self._server_name and self.remote_alias is not None:
                answer = await self.remote_alias(room_id_or_alias)
                if answer is not None:
                    return str(answer["room_id"])
                raise MatrixError(404, "Room alias not found", Codes.NOT_FOUND)
            if found is None:
                msg = "Room alias not found" if server == self._server_name else (
                    "Room alias is on another server; federation is not enabled")
                raise MatrixError(404, msg, Codes.NOT_FOUND)
            return found[0]
        if not room_id_or_alias.startswith("!"):
            raise MatrixError(400, "Invalid room ID or alias", Codes.INVALID_PARAM)
        return room_id_or_alias

    async def _member_content(self, user_id: str, membership: str,
                              extra: dict[str, Any]) -> dict[str, Any]:
        content: dict[str, Any] = {"membership": membership}
        if membership in ("join", "knock", "invite"):
            profile = await self._profiles.get_profile(user_id)
            if profile is not None and profile.displayname:
                content["displayname"] = profile.displayname
            if profile is not None and profile.avatar_url:
                content["avatar_url"] = profile.avatar_url
        content.update({k: v for k, v in extra.items() if v is not None})
        return content

    async def update(
        self,
        sender: str,
        room_id: str,
        target: str,
        membership: str,
        reason: str | None = None,
        extra: dict[str, Any] | None = None,
        check: Callable[[RoomSnapshot], Awaitable[None]] | None = None,
    ) -> Event:
        split_user_id(target)
        if membership not in ("leave", "ban") and self.check_room_blocked is not None:
            await self.check_room_blocked(room_id)  # before 404: a purged room stays blocked
        await self._creation.room_version(room_id)  # 404 for unknown rooms
        if membership == "invite" and self.check_invitee is not None:
            await self.check_invitee(target)
        if membership == "invite" and self.may_invite is not None:
            await self.may_invite(sender, target, room_id)
        fields: dict[str, Any] = dict(extra or {})
        if reason is not None:
            fields["reason"] = reason
        if membership in ("join", "knock"):
            content = await self._member_content(target, membership, fields)
        else:
            content = {"membership": membership, **fields}
        return await self._creation.send(room_id, sender, "m.room.member", content, target,
                                         check=check)

    async def set_member_state(self, sender: str, room_id: str, target: str,
                               content: Mapping[str, Any], is_guest: bool = False) -> str:
        """PUT /rooms/{roomId}/state/m.room.member/{userId}, as Synapse: the content's
        ``membership`` picks the same path the membership endpoints take (with their
        checks); the client's other keys ride along (a per-room display name), except
        those only the server sets. Returns the id of the target's member event."""
        event = await self._set_member_state(sender, room_id, target, content, is_guest)
        if event is not None:
            return event.event_id
        state = await self._creation.current_state(room_id, [("m.room.member", target)])
        return state[("m.room.member", target)].event_id

    async def _set_member_state(self, sender: str, room_id: str, target: str,
                                content: Mapping[str, Any], is_guest: bool) -> Event | None:
        membership = content.get("membership")
        if membership not in ("join", "invite", "leave", "ban", "knock"):
            raise MatrixError(400, "membership must be one of join, invite, leave, ban, knock",
                              Codes.BAD_JSON)
        split_user_id(target)
        reason = content.get("reason")
        reason = reason if isinstance(reason, str) else None
        extra = {k: v for k, v in content.items() if k not in SERVER_MEMBER_KEYS}
        self_only = membership in ("join", "knock")
        if self_only and target != sender:
            raise MatrixError(403, f"Cannot {membership} on behalf of another user",
                              Codes.FORBIDDEN)
        if membership == "join":
            current = await self._members.get_membership(sender, room_id)
            if current is not None and current.membership == "join":
                # Already joined: a new join carrying the override (e.g. displayname).
                return await self.update(sender, room_id, sender, "join", reason, extra)
            await self.join(sender, room_id, reason, extra, is_guest=is_guest)
            return None
        if membership == "leave":
            if target == sender:
                await self.leave(sender, room_id, reason)
                return None
            return await self.change_other(sender, room_id, target, "kick", "leave", reason)
        if membership == "ban":
            return await self.change_other(sender, room_id, target, "ban", "ban", reason)
        return await self.update(sender, room_id, target, membership, reason, extra)

    async def change_other(self, sender: str, room_id: str, target: str, action: str,
                           membership: str, reason: str | None) -> Event:
        """kick / ban / unban, with Synapse's checks on the target's current membership."""
        split_user_id(target)
        await self._creation.room_version(room_id)
        current = await self._members.get_membership(target, room_id)
        state = current.membership if current is not None else "leave"
        if action == "kick" and state not in ("join", "invite", "knock"):
            raise MatrixError(403, "The target user is not in the room", Codes.FORBIDDEN)
        if action == "unban" and state != "ban":
            raise MatrixError(403, "The target user is not banned", Codes.FORBIDDEN)
        return await self.update(sender, room_id, target, membership, reason)

    async def _resolve_with_servers(self, target: str) -> tuple[str, list[str]]:
        """The room id and, for another server's alias, the servers it names."""
        if target.startswith("#") and self.remote_alias is not None:
            _, server = check_room_alias(target)
            if server != self._server_name and await self._aliases.get_alias(target) is None:
                answer = await self.remote_alias(target)
                if answer is None:
                    raise MatrixError(404, "Room alias not found", Codes.NOT_FOUND)
                servers = answer.get("servers")
                return str(answer["room_id"]), [
                    s for s in (servers if isinstance(servers, list) else [])
                    if isinstance(s, str)][:MAX_SERVERS]
        return await self.resolve_room(target), []

    async def _is_remote_only(self, room_id: str) -> bool:
        """Whether this server holds no state of the room (unknown, or only an
        out-of-band invite): membership then goes through a resident server."""
        return not (await self._creation.snapshot(room_id)).state_ids

    async def join(self, user_id: str, room_id_or_alias: str, reason: str | None = None,
                   custom: Mapping[str, Any] | None = None, is_guest: bool = False,
                   servers: Sequence[str] = ()) -> str:
        """Join; ``custom`` is the rest of the client's request body, kept on the member
        event as Synapse does, except the keys only the server may set. A guest may only
        join a room whose ``m.room.guest_access`` is ``can_join``: guests are a local
        notion the auth rules do not know, so the check is here, in the room's queue.
        ``servers``: the client's ``via`` hints, for a room held elsewhere."""
        room_id, alias_servers = await self._resolve_with_servers(room_id_or_alias)
        if self.check_room_blocked is not None:
            await self.check_room_blocked(room_id)
        current = await self._members.get_membership(user_id, room_id)
        if current is not None and current.membership == "join":
            return room_id  # idempotent, as Synapse
        if self.may_join is not None:
            await self.may_join(user_id, room_id,
                                current is not None and current.membership == "invite")
        extra = {k: v for k, v in (custom or {}).items() if k not in SERVER_MEMBER_KEYS}
        if self.remote_join is not None and await self._is_remote_only(room_id):
            if is_guest:  # as Synapse: guests are a local notion
                raise MatrixError(403, "Guests cannot join rooms on other servers",
                                  Codes.FORBIDDEN)
            fields = {**extra, "reason": reason}
            content = await self._member_content(user_id, "join", fields)
            await self.remote_join(user_id, room_id, [*servers, *alias_servers], content)
            return room_id
        extra.update(await self._restricted_join_fields(
            user_id, room_id, current.membership if current is not None else None) or {})
        check = self._guest_can_join(room_id) if is_guest else None
        await self.update(user_id, room_id, user_id, "join", reason, extra, check=check)
        return room_id

    def _guest_can_join(self, room_id: str) -> Callable[[RoomSnapshot], Awaitable[None]]:
        """A check (run in the room's queue) refusing a guest's join unless the room's
        guest access is ``can_join``."""

        async def check(snap: RoomSnapshot) -> None:
            event_id = snap.state_ids.get((GUEST_ACCESS, ""))
            event = None
            if event_id is not None:
                state = await self._creation.current_state(room_id, [(GUEST_ACCESS, "")])
                event = state.get((GUEST_ACCESS, ""))
            if event is None or event.event_id != event_id or (
                    event.content.get("guest_access") != CAN_JOIN):
                raise MatrixError(403, "Guest access not allowed",
                                  Codes.GUEST_ACCESS_FORBIDDEN)

        return check

    def on_event_persisted(self, event: Event) -> None:
        """Fan-out subscriber: starts the guests' removal when guest access is revoked.
        Not awaited: the leaves are events of the same room, whose delivery waits for
        this one to finish."""
        if event.type != GUEST_ACCESS or event.state_key != "" or (
                event.content.get("guest_access") == CAN_JOIN):
            return
        d = defer.ensureDeferred(self.kick_guests_on_revocation(event))
        d.addErrback(lambda f: logger.error("guest kick failed in %s: %s", event.room_id,
                                            f.getTraceback()))

    async def kick_guests_on_revocation(self, event: Event) -> None:
        """After guest access is turned off, every joined guest leaves the room (as
        Synapse: the leave is the guest's own, so no power level is needed)."""
        if event.type != GUEST_ACCESS or event.state_key != "" or (
                event.content.get("guest_access") == CAN_JOIN):
            return
        for record in await self._members.members_of_room(event.room_id, ("join",)):
            if domain_of(record.user_id) != self._server_name:
                continue
            if not await self._is_guest(record.user_id):
                continue
            try:
                await self.update(record.user_id, event.room_id, record.user_id, "leave")
            except MatrixError as e:
                logger.warning("guest access revoked: could not remove %s from %s: %s",
                               record.user_id, event.room_id, e)

    @staticmethod
    def _is_restricted(join_rule: Any, version: RoomVersion) -> bool:
        return (join_rule == "restricted" and version.restricted_joins) or (
            join_rule == "knock_restricted" and version.knock_restricted)

    async def restricted_join_fields(self, user_id: str, room_id: str,
                                     current: str | None) -> dict[str, Any] | None:
        """The same for a remote user's join (make_join, federation/membership.py)."""
        return await self._restricted_join_fields(user_id, room_id, current)

    async def knock(self, user_id: str, room_id_or_alias: str, reason: str | None = None,
                    servers: Sequence[str] = ()) -> str:
        """Knock; on a room held elsewhere, through a resident server."""
        room_id, alias_servers = await self._resolve_with_servers(room_id_or_alias)
        if self.remote_knock is not None and await self._is_remote_only(room_id):
            if self.check_room_blocked is not None:
                await self.check_room_blocked(room_id)
            content = await self._member_content(user_id, "knock", {"reason": reason})
            await self.remote_knock(user_id, room_id, [*servers, *alias_servers], content)
            return room_id
        await self.update(user_id, room_id, user_id, "knock", reason)
        return room_id

    async def _restricted_join_fields(self, user_id: str, room_id: str,
                                      current: str | None) -> dict[str, Any] | None:
        """``{join_authorised_via_users_server: ...}`` for a join that needs one.

        A restricted room (rule 4.3.5) admits a user who is not invited only when they
        are joined to one of the rooms its ``allow`` list names and a user joined to the
        room, able to invite, vouches for the join. As Synapse, the voucher is the local
        member with the highest power level. Invited users, and rooms that are not
        restricted, need nothing (the auth rules decide as usual).
        """
        version = await self._creation.room_version(room_id)
        if current in ("invite", "join") or current == "ban":
            return None  # invited: 4.3.5.1; banned: refused by the auth rules
        state = await self._creation.current_state(
            room_id, [(CREATE, ""), (POWER_LEVELS, ""), (JOIN_RULES, "")])
        join_rules = state.get((JOIN_RULES, ""))
        content = join_rules.content if join_rules is not None else {}
        if not self._is_restricted(content.get("join_rule"), version):
            return None
        if not await self._in_allowed_room(user_id, content.get("allow")):
            raise MatrixError(403, "You do not belong to any of the required rooms/spaces to"
                              " join this room.", Codes.FORBIDDEN)
        authoriser = await self._choose_authoriser(room_id, state)
        if authoriser is None:
            raise MatrixError(400, "Unable to find a user which could issue an invite",
                              UNABLE_TO_GRANT_JOIN)
        return {AUTHORISING_USER: authoriser}

    async def _in_allowed_room(self, user_id: str, allow: Any) -> bool:
        """Whether ``user_id`` is joined to a room an ``m.room_membership`` condition names
        (other condition types are not understood and grant nothing)."""
        if not isinstance(allow, list):
            return False
        for condition in allow:
            if not isinstance(condition, Mapping):
                continue
            allowed_room = condition.get("room_id")
            if condition.get("type") != ROOM_MEMBERSHIP_CONDITION or not isinstance(allowed_room, str):
                continue
            record = await self._members.get_membership(user_id, allowed_room)
            if record is not None and record.membership == "join":
                return True
        return False

    async def _choose_authoriser(self, room_id: str,
                                 state: Mapping[StateKey, Event]) -> str | None:
        """The joined local user with the highest power level, if it may invite."""
        create = state.get((CREATE, ""))
        if create is None:
            return None
        best: str | None = None
        best_level: float = 0
        for record in await self._members.members_of_room(room_id, ("join",)):
            if domain_of(record.user_id) != self._server_name:
                continue
            level = get_user_power_level(record.user_id, state, create)
            if best is None or level > best_level:
                best, best_level = record.user_id, level
        if best is None or best_level < get_named_level("invite", state):
            return None
        return best

    async def leave(self, user_id: str, room_id: str, reason: str | None = None) -> None:
        current = await self._members.get_membership(user_id, room_id)
        if current is None or current.membership in ("leave",):
            await self._creation.room_version(room_id)
            raise MatrixError(403, "You are not a member of this room", Codes.FORBIDDEN)
        if self.remote_leave is not None and await self._is_remote_only(room_id):
            content: dict[str, Any] = {"membership": "leave"}
            if reason is not None:
                content["reason"] = reason
            await self.remote_leave(user_id, room_id, content)
            return
        await self.update(user_id, room_id, user_id, "leave", reason)

    async def leave_all_rooms(self, user_id: str) -> None:
        """On deactivation (as Synapse): leave every joined room, reject every invite and
        withdraw every knock. One room failing (e.g. a broken room) does not stop the rest."""
        records = await self._members.rooms_for_user(
            user_id, ("join", "invite", "knock"), include_forgotten=True)
        for record in records:
            try:
                await self.update(user_id, record.room_id, user_id, "leave")
            except MatrixError as e:
                logger.warning("deactivation: could not leave %s for %s: %s", record.room_id,
                               user_id, e)

    async def refresh_profile(self, user_id: str) -> None:
        """After a display name or avatar change: a new join event in each joined room
        carrying the new profile (as Synapse). The rest of the content is kept, except
        the authorising user, which only vouched for the original join. A room that
        refuses (e.g. member events need a higher power level) does not stop the rest."""
        profile = await self._profiles.get_profile(user_id)
        fields = {"displayname": profile.displayname if profile is not None else None,
                  "avatar_url": profile.avatar_url if profile is not None else None}
        for record in await self._members.rooms_for_user(user_id, ("join",)):
            state = await self._creation.current_state(
                record.room_id, [("m.room.member", user_id)])
            current = state.get(("m.room.member", user_id))
            if current is None or current.membership != "join":
                continue
            content = {k: v for k, v in current.content.items() if k != AUTHORISING_USER}
            for key, value in fields.items():
                if value:
                    content[key] = value
                else:
                    content.pop(key, None)
            if content == current.content:
                continue
            seen = current.event_id

            async def unchanged(snap: RoomSnapshot, seen: str = seen) -> None:
                # In the room's queue: never re-join a user who left meanwhile.
                if snap.state_ids.get(("m.room.member", user_id)) != seen:
                    raise MatrixError(409, "Membership changed meanwhile", Codes.UNKNOWN)

            try:
                await self._creation.send(record.room_id, user_id, "m.room.member", content,
                                          user_id, check=unchanged)
            except MatrixError as e:
                logger.warning("profile change: could not update %s in %s: %s", user_id,
                               record.room_id, e)

    async def forget(self, user_id: str, room_id: str) -> None:
        current = await self._members.get_membership(user_id, room_id)
        if current is None:
            raise MatrixError(404, "Unknown room", Codes.NOT_FOUND)
        if current.membership not in ("leave", "ban"):
            raise MatrixError(400, "You must leave the room before forgetting it", Codes.UNKNOWN)
        await self._members.set_forgotten(user_id, room_id)
