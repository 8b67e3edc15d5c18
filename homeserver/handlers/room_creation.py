"""POST /createRoom: the create event, the creator's join, power levels, presets,
initial state, name/topic/alias and invites, in the order Synapse writes them."""

from __future__ import annotations

import copy
import secrets
import string
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.events.room_versions import get_room_version
from homeserver.handlers.event_creation import (
    EventCreationHandler,
    EventDraft,
    check_client_state_type,
)
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import split_user_id
from storage.stores.profiles import ProfileStore
from storage.stores.room_aliases import RoomAliasStore
from storage.stores.rooms import RoomStore

PRESETS: dict[str, dict[str, Any]] = {
    # As Synapse: in the private presets any member may invite (invite level 0); a
    # public room keeps invites to moderators (50).
    "private_chat": {"join_rule": "invite", "history_visibility": "shared",
                     "guest_access": "can_join", "invitees_are_admins": False, "invite": 0},
    "trusted_private_chat": {"join_rule": "invite", "history_visibility": "shared",
                             "guest_access": "can_join", "invitees_are_admins": True,
                             "invite": 0},
    "public_chat": {"join_rule": "public", "history_visibility": "shared",
                    "guest_access": "forbidden", "invitees_are_admins": False, "invite": 50},
}

DEFAULT_EVENT_LEVELS = {
    "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
    "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
    "m.room.server_acl": 100, "m.room.encryption": 100,
}


def generate_room_localpart() -> str:
    return "".join(secrets.choice(string.ascii_letters) for _ in range(18))


class RoomCreationHandler:
    def __init__(
        self,
        config: Config,
        clock: Clock,
        creator: EventCreationHandler,
        profiles: ProfileStore,
        aliases: RoomAliasStore,
        rooms: RoomStore,
        default_initial_state: list[dict[str, Any]] | None = None,
    ) -> None:
        self._rooms = rooms
        self._config = config
        self._server_name = config.server_name
        self._clock = clock
        self._creator = creator
        self._profiles = profiles
        self._aliases = aliases
        # State a new room gets unless the request sets it (e.g. m.room.encryption under
        # the e2ee_only "everywhere" policy): [{"type", "state_key", "content"}].
        self.default_initial_state: list[dict[str, Any]] = list(default_initial_state or [])
        # invite_3pid: (inviter, room_id, id_server, id_access_token, medium, address),
        # set by the identity area (homeserver/areas/identity.py).
        self.invite_3pid: Callable[[str, str, str, str, str, str], Awaitable[None]] | None = None
        # Plugin gates (plugins/host.py), each raising a MatrixError to refuse:
        # may_create_room(user_id, request), may_create_alias(user_id, alias, room_id),
        # may_publish(user_id, room_id), may_invite(inviter, invitee, room_id).
        self.may_create_room: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
        # Several events writers (issue 18): a new room's id is one this process writes.
        self.owns_room: Callable[[str], bool] | None = None
        # ... and a process writing no room asks a writer to make it (homeserver/
        # replication/remote_create.py): async fn(user_id, body) -> (room_id, alias).
        self.remote_create_room: Callable[..., Awaitable[tuple[str, str | None]]] | None = None
        self.may_create_alias: Callable[[str, str, str], Awaitable[None]] | None = None
        self.may_publish: Callable[[str, str], Awaitable[None]] | None = None
        self.may_invite: Callable[[str, str, str], Awaitable[None]] | None = None
        # Moderation (homeserver/handlers/shadow_ban.py): async fn(creator, invites) ->
        # the invites to send (none for a shadow-banned creator; 403 for a blocked server).
        self.filter_invites: Callable[[str, list[str]], Awaitable[list[str]]] | None = None
        # Blocked rooms and aliases (homeserver/handlers/admin_rooms.py), each raising
        # M_FORBIDDEN: a blocked room id or an alias a room shutdown removed.
        self.check_room_blocked: Callable[[str], Awaitable[None]] | None = None
        self.check_alias_blocked: Callable[[str], Awaitable[None]] | None = None

    async def _plugin_gates(self, user_id: str, room_id: str, alias: str | None,
                            public: bool, invites: list[str]) -> None:
        """The plugin gates that need the new room's id, before anything is written."""
        if alias is not None and self.may_create_alias is not None:
            await self.may_create_alias(user_id, alias, room_id)
        if public and self.may_publish is not None:
            await self.may_publish(user_id, room_id)
        if self.may_invite is not None:
            for invitee in invites:
                await self.may_invite(user_id, invitee, room_id)

    async def create_room(self, user_id: str, body: dict[str, Any]) -> tuple[str, str | None]:
        """Returns (room_id, room_alias or None)."""
        if self.remote_create_room is not None:
            return await self.remote_create_room(user_id, body)
        version_id = body.get("room_version", self._config.default_room_version)
        version = get_room_version(version_id)
        if version is None:
            raise MatrixError(400, f"Your homeserver does not support room version {version_id}",
                              Codes.UNSUPPORTED_ROOM_VERSION)
        for given in body.get("initial_state", []):
            check_client_state_type(given["type"])
        if self.may_create_room is not None:
            await self.may_create_room(user_id, copy.deepcopy(body))
        preset_name = body.get("preset") or (
            "public_chat" if body.get("visibility") == "public" else "private_chat")
        preset = PRESETS[preset_name]
        invites = list(dict.fromkeys(body.get("invite", [])))
        for invitee in invites:
            split_user_id(invitee)
        if self.filter_invites is not None:
            invites = await self.filter_invites(user_id, invites)

        alias = None
        if body.get("room_alias_name") is not None:
            alias = f"#{body['room_alias_name']}:{self._server_name}"
            if self.check_alias_blocked is not None:
                await self.check_alias_blocked(alias)
            if await self._aliases.get_alias(alias) is not None:
                raise MatrixError(400, "Room alias already taken", Codes.ROOM_IN_USE)

        creation_content = dict(body.get("creation_content") or {})
        creation_content["room_version"] = version.identifier
        if not version.implicit_room_creator:
            creation_content["creator"] = user_id
        else:
            creation_content.pop("creator", None)
        owned = self.owns_room or (lambda _room_id: True)
        room_id = None if version.room_id_is_create_hash else (
            f"!{generate_room_localpart()}:{self._server_name}")
        while room_id is not None and not owned(room_id):  # another writer's: draw again
            room_id = f"!{generate_room_localpart()}:{self._server_name}"
        create = self._creator.build_create_event(version, user_id, creation_content, room_id)
        # A v12 room id is the create event's hash: the same creator and content in the
        # same millisecond would name an existing room (or one another writer writes), so
        # move the timestamp on.
        ts = create.origin_server_ts
        while version.room_id_is_create_hash and (
                not owned(create.room_id)
                or await self._rooms.get_room_version(create.room_id) is not None):
            ts += 1
            create = self._creator.build_create_event(version, user_id, creation_content,
                                                      None, ts)
        room_id = create.room_id
        if self.check_room_blocked is not None:
            await self.check_room_blocked(room_id)
        await self._plugin_gates(user_id, room_id, alias, body.get("visibility") == "public",
                                 invites)
        # The alias exists before the canonical-alias event names it (as Synapse does);
        # it goes again if any event of the new room is refused.
        if alias is not None and not await self._aliases.create_alias(
                alias, room_id, user_id, self._clock.time_msec()):
            raise MatrixError(400, "Room alias already taken", Codes.ROOM_IN_USE)

        drafts: list[EventDraft] = []

        def state(event_type: str, content: dict[str, Any], state_key: str = "") -> None:
            drafts.append(EventDraft(event_type, content, state_key))

        profile = await self._profiles.get_profile(user_id)
        member: dict[str, Any] = {"membership": "join"}
        if profile is not None and profile.displayname:
            member["displayname"] = profile.displayname
        if profile is not None and profile.avatar_url:
            member["avatar_url"] = profile.avatar_url
        state("m.room.member", member, user_id)

        initial = {(e["type"], e.get("state_key", "")): e.get("content", {})
                   for e in body.get("initial_state", [])}
        for default in self.default_initial_state:
            initial.setdefault((default["type"], default["state_key"]), default["content"])

        power: dict[str, Any] = {
            "users": {} if version.creators_have_infinite_power else {user_id: 100},
            "users_default": 0, "events": dict(DEFAULT_EVENT_LEVELS), "events_default": 0,
            "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": preset["invite"],
            "historical": 100,
        }
        if preset["invitees_are_admins"]:
            for invitee in invites:
                power["users"][invitee] = 100
        override = body.get("power_level_content_override") or {}
        power.update(override)
        if ("m.room.power_levels", "") in initial:
            power = initial.pop(("m.room.power_levels", ""))
        state("m.room.power_levels", power)

        if alias is not None:
            state("m.room.canonical_alias", {"alias": alias})
        if ("m.room.join_rules", "") not in initial:
            state("m.room.join_rules", {"join_rule": preset["join_rule"]})
        if ("m.room.history_visibility", "") not in initial:
            state("m.room.history_visibility", {"history_visibility": preset["history_visibility"]})
        if ("m.room.guest_access", "") not in initial:
            state("m.room.guest_access", {"guest_access": preset["guest_access"]})
        for (event_type, state_key), content in initial.items():
            state(event_type, content, state_key)
        if body.get("name") is not None:
            state("m.room.name", {"name": body["name"]})
        if body.get("topic") is not None:
            state("m.room.topic", {"topic": body["topic"]})
        for invitee in invites:
            content = {"membership": "invite"}
            if body.get("is_direct"):
                content["is_direct"] = True
            state("m.room.member", content, invitee)

        async def store_room() -> None:
            await self._rooms.store_room(room_id, version.identifier, user_id, False,
                                         self._clock.time_msec())

        try:
            await self._creator.create_room(create, drafts, before_write=store_room)
        except BaseException:
            if alias is not None:
                await self._aliases.delete_alias(alias)
            raise
        if body.get("visibility") == "public":
            await self._rooms.set_public(room_id, True)
        for tp in body.get("invite_3pid", []):  # after the room exists, as Synapse
            if self.invite_3pid is None:
                raise MatrixError(400, "Untrusted ID server", Codes.SERVER_NOT_TRUSTED)
            await self.invite_3pid(user_id, room_id, tp["id_server"],
                                   tp.get("id_access_token", ""), tp["medium"], tp["address"])
        return room_id, alias
