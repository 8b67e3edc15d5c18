"""Shadow-bans (Synapse's semantics, issue 15).

A shadow-banned user's requests succeed as usual, but what they would show others is
dropped: messages, state and redactions get a real-looking event id and are never
stored or delivered; their invites (``/invite``, ``createRoom``'s ``invite`` and
``invite_3pid``) reach nobody; their typing is not shown. Their own membership (join,
leave) and profile still work, as in Synapse. The checks sit in the event builder
(homeserver/handlers/event_creation.py ``shadow_banned``), room creation
(``filter_invites``) and typing; this module keeps who is banned, with a short cache
because every send asks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from homeserver.auth.roles import ADMIN
from homeserver.clock import Clock
from homeserver.handlers.admin_media import audit_action
from homeserver.handlers.admin_users import Actor
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import split_user_id
from storage.stores.shadow_bans import ShadowBanStore
from storage.stores.users import UserStore

CACHE_TTL_S = 5.0
CACHE_MAX = 100_000


class ShadowBans:
    def __init__(self, server_name: str, clock: Clock, store: ShadowBanStore, users: UserStore,
                 audit: SecurityEventRecorder,
                 role_of: Callable[[str], Awaitable[str | None]]) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._users = users
        self._audit = audit
        self._role_of = role_of
        # user -> (banned, when read): another process's change shows within the TTL.
        self._cache: OrderedDict[str, tuple[bool, float]] = OrderedDict()

    async def is_shadow_banned(self, user_id: str) -> bool:
        now = self._clock.time()
        hit = self._cache.get(user_id)
        if hit is not None and now - hit[1] < CACHE_TTL_S:
            return hit[0]
        banned = await self._store.is_banned(user_id)
        self._cache[user_id] = (banned, now)
        self._cache.move_to_end(user_id)
        while len(self._cache) > CACHE_MAX:
            self._cache.popitem(last=False)
        return banned

    async def filter_invites(self, inviter: str, invites: list[str]) -> list[str]:
        """createRoom's invites: none for a shadow-banned creator (the room is made)."""
        if invites and await self.is_shadow_banned(inviter):
            return []
        return invites

    async def set_banned(self, actor: Actor, user_id: str, banned: bool) -> None:
        """Shadow-ban or lift it; audited. Only local users; an account holding an admin
        role can only be shadow-banned by an admin."""
        try:
            _, server = split_user_id(user_id)
        except MatrixError as e:
            raise MatrixError(400, "Invalid user id", Codes.INVALID_PARAM) from e
        if server != self._server_name:
            raise MatrixError(400, "Only local users can be shadow-banned", Codes.INVALID_PARAM)
        if await self._users.get_user(user_id) is None:
            raise MatrixError(404, "Unknown user", Codes.NOT_FOUND)
        if actor.role != ADMIN and await self._role_of(user_id) is not None:
            raise MatrixError(403, "Only an admin may act on an account that holds an "
                              "admin role", Codes.FORBIDDEN)
        if banned:
            await self._store.ban(user_id, actor.requester.user_id, self._clock.time_msec())
        else:
            await self._store.unban(user_id)
        self._cache.pop(user_id, None)
        await audit_action(self._audit, actor, "shadow_ban" if banned else "shadow_unban",
                           user_id, user_id=user_id)
