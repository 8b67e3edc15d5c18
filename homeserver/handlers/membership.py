"""Membership changes: join, invite, leave, kick, ban, unban, knock, forget.

Whether a change is allowed is decided by the event authorization rules (the one
module every event goes through); this handler only builds the right member event.
"""

from __future__ import annotations

from typing import Any

from homeserver.events.model import Event
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import check_room_alias, split_user_id
from storage.stores.profiles import ProfileStore
from storage.stores.room_aliases import RoomAliasStore
from storage.stores.room_members import RoomMemberStore


class MembershipHandler:
    def __init__(
        self,
        server_name: str,
        creation: EventCreationHandler,
        members: RoomMemberStore,
        profiles: ProfileStore,
        aliases: RoomAliasStore,
    ) -> None:
        self._server_name = server_name
        self._creation = creation
        self._members = members
        self._profiles = profiles
        self._aliases = aliases

    async def resolve_room(self, room_id_or_alias: str) -> str:
        if room_id_or_alias.startswith("#"):
            _, server = check_room_alias(room_id_or_alias)
            found = await self._aliases.get_alias(room_id_or_alias)
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
    ) -> Event:
        split_user_id(target)
        await self._creation.room_version(room_id)  # 404 for unknown rooms
        fields: dict[str, Any] = dict(extra or {})
        if reason is not None:
            fields["reason"] = reason
        if membership in ("join", "knock"):
            content = await self._member_content(target, membership, fields)
        else:
            content = {"membership": membership, **fields}
        return await self._creation.send(room_id, sender, "m.room.member", content, target)

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

    async def join(self, user_id: str, room_id_or_alias: str, reason: str | None = None) -> str:
        room_id = await self.resolve_room(room_id_or_alias)
        current = await self._members.get_membership(user_id, room_id)
        if current is not None and current.membership == "join":
            return room_id  # idempotent, as Synapse
        await self.update(user_id, room_id, user_id, "join", reason)
        return room_id

    async def leave(self, user_id: str, room_id: str, reason: str | None = None) -> None:
        current = await self._members.get_membership(user_id, room_id)
        if current is None or current.membership in ("leave",):
            await self._creation.room_version(room_id)
            raise MatrixError(403, "You are not a member of this room", Codes.FORBIDDEN)
        await self.update(user_id, room_id, user_id, "leave", reason)

    async def forget(self, user_id: str, room_id: str) -> None:
        current = await self._members.get_membership(user_id, room_id)
        if current is None:
            raise MatrixError(404, "Unknown room", Codes.NOT_FOUND)
        if current.membership not in ("leave", "ban"):
            raise MatrixError(400, "You must leave the room before forgetting it", Codes.UNKNOWN)
        await self._members.set_forgotten(user_id, room_id)
