"""Server notices (the spec's "Server Notices" module, configured as Synapse's
``server_notices``): messages from the server itself to one user, in a room the server
creates for that user on the first notice.

The room is made through the one event path (RoomCreationHandler, MembershipHandler,
EventCreationHandler), sent by a system user (``@<system_mxid_localpart>:<server>``,
reserved at start-up as an account without a password, so nobody can register or log
in as it). The user is invited and, with ``auto_join`` (the default), joined; the room
is tagged ``m.server_notice`` for the user. Users have power level -10 in it, so they
cannot send, change state or invite anyone; they may leave, and the next notice then
opens a new room. Notices are ``m.room.message`` events with msgtype
``m.server_notice``. Deactivated and unknown users get none.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.detection.config import ServerNoticesConfig
from homeserver.handlers.account_data import AccountDataHandler
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.membership import MembershipHandler
from homeserver.handlers.room_creation import RoomCreationHandler
from storage.stores.profiles import ProfileStore
from storage.stores.room_members import RoomMemberStore
from storage.stores.server_notices import ServerNoticeStore
from storage.stores.users import UserInUseError, UserStore

logger = logging.getLogger(__name__)

SERVER_NOTICE_TAG = "m.server_notice"
SERVER_NOTICE_MSGTYPE = "m.server_notice"
GENERIC_NOTICE_TYPE = "org.parley.server_notice"
SECURITY_NOTICE_TYPE = "org.parley.security_alert"
# The user's level in a notices room: below events_default (0) and invite (50).
USER_LEVEL = -10
MAX_BODY = 16384


class ServerNoticesDisabledError(Exception):
    """Server notices are switched off (config) or the system user is unusable."""


class ServerNoticesHandler:
    def __init__(
        self,
        server_name: str,
        config: ServerNoticesConfig,
        clock: Clock,
        store: ServerNoticeStore,
        users: UserStore,
        profiles: ProfileStore,
        members: RoomMemberStore,
        room_creation: RoomCreationHandler,
        membership: MembershipHandler,
        event_creation: EventCreationHandler,
        account_data: AccountDataHandler,
    ) -> None:
        self._config = config
        self._clock = clock
        self._store = store
        self._users = users
        self._profiles = profiles
        self._members = members
        self._room_creation = room_creation
        self._membership = membership
        self._creation = event_creation
        self._account_data = account_data
        self.system_user_id = f"@{config.system_mxid_localpart}:{server_name}"
        self._usable = config.enabled
        # One room creation per user at a time: two first notices share one room.
        self._locks: dict[str, defer.DeferredLock] = {}

    @property
    def enabled(self) -> bool:
        return self._usable

    async def ensure_system_user(self) -> None:
        """Reserve the system user (no password: nobody can log in as it) and keep its
        display name as configured. An existing account WITH a password was registered
        by someone: notices are then switched off rather than sent in their name."""
        if not self._usable:
            return
        record = await self._users.get_user(self.system_user_id)
        if record is None:
            try:
                await self._users.create_user(self.system_user_id, None,
                                              self._clock.time_msec(),
                                              displayname=self._config.system_mxid_display_name)
            except UserInUseError:
                record = await self._users.get_user(self.system_user_id)
        if record is not None and (record.password_hash is not None or record.deactivated):
            logger.error("server notices disabled: %s is a regular (or deactivated) account; "
                         "choose another server_notices.system_mxid_localpart",
                         self.system_user_id)
            self._usable = False
            return
        profile = await self._profiles.get_profile(self.system_user_id)
        if profile is not None and profile.displayname != self._config.system_mxid_display_name:
            await self._profiles.set_displayname(self.system_user_id,
                                                 self._config.system_mxid_display_name)
        if profile is not None and self._config.system_mxid_avatar_url and \
                profile.avatar_url != self._config.system_mxid_avatar_url:
            await self._profiles.set_avatar_url(self.system_user_id,
                                                self._config.system_mxid_avatar_url)

    async def send_notice(self, user_id: str, body: str, *,
                          formatted_body: str | None = None,
                          extra: dict[str, Any] | None = None,
                          notice_type: str = GENERIC_NOTICE_TYPE) -> str | None:
        """Send ``body`` (plain text; ``formatted_body`` as org.matrix.custom.html) to
        ``user_id``'s notices room. ``notice_type`` is the content's
        ``server_notice_type``, which the spec's schema requires (the spec names only
        ``m.server_notice.usage_limit_reached``; others are namespaced). Returns the event
        id, or None when the user is not a live local account. Raises
        :class:`ServerNoticesDisabledError` when off."""
        if not self._usable:
            raise ServerNoticesDisabledError("server notices are disabled")
        if user_id == self.system_user_id:
            return None
        record = await self._users.get_user(user_id)
        if record is None or record.deactivated:
            return None
        content: dict[str, Any] = {"msgtype": SERVER_NOTICE_MSGTYPE, "body": body[:MAX_BODY],
                                   "server_notice_type": notice_type}
        if formatted_body is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = formatted_body[:MAX_BODY]
        for k, v in (extra or {}).items():
            content.setdefault(k, v)
        room_id = await self._room_for(user_id)
        event = await self._creation.send(room_id, self.system_user_id, "m.room.message",
                                          content)
        return event.event_id

    async def _room_for(self, user_id: str) -> str:
        lock = self._locks.setdefault(user_id, defer.DeferredLock())
        await lock.acquire()
        try:
            room_id = await self._store.get_room(user_id)
            if room_id is not None:
                current = await self._members.get_membership(user_id, room_id)
                if current is not None and current.membership in ("join", "invite"):
                    return room_id
            return await self._create_room(user_id)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user_id, None)

    async def _create_room(self, user_id: str) -> str:
        room_id, _ = await self._room_creation.create_room(self.system_user_id, {
            "preset": "private_chat",
            "name": self._config.room_name,
            "invite": [user_id],
            "creation_content": {"m.federate": False},
            "power_level_content_override": {"users_default": USER_LEVEL},
        })
        await self._store.set_room(user_id, room_id, self._clock.time_msec())
        await self._account_data.set_account_data(
            user_id, room_id, "m.tag", {"tags": {SERVER_NOTICE_TAG: {"order": 0.5}}})
        if self._config.auto_join:
            await self._membership.join(user_id, room_id)
        return room_id
