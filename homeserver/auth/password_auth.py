"""Checking a user's password (login and the UIA password stage share this)."""

from __future__ import annotations

import logging
from typing import Any

from homeserver.auth.passwords import PasswordHasher
from storage.stores.users import UserRecord, UserStore

logger = logging.getLogger(__name__)


class PasswordAuth:
    def __init__(self, server_name: str, users: UserStore, hasher: PasswordHasher) -> None:
        self._server_name = server_name
        self._users = users
        self._hasher = hasher

    def resolve_identifier(self, identifier: dict[str, Any]) -> str | None:
        """The local user id an ``m.id.user`` identifier names, or None.

        Accepts a localpart or a full user id; localparts are matched lower-cased,
        as accounts are created lower-case.
        """
        if identifier.get("type") != "m.id.user":
            return None
        user = identifier.get("user")
        if not isinstance(user, str) or not user:
            return None
        if user.startswith("@"):
            local, sep, server = user[1:].partition(":")
            if not sep or server != self._server_name:
                return None
        else:
            local = user
        if not local:
            return None
        return f"@{local.lower()}:{self._server_name}"

    async def verify(self, user_id: str, password: str) -> tuple[bool, UserRecord | None]:
        """(password correct, user record). Costs one Argon2 verify even for unknown users."""
        user = await self._users.get_user(user_id)
        ok, needs_rehash = await self._hasher.verify(user.password_hash if user else None,
                                                     password)
        if ok and user is not None and user.password_hash and needs_rehash:
            new_hash = await self._hasher.hash(password)
            await self._users.replace_password_hash(user_id, user.password_hash, new_hash)
            logger.info("rehashed password with current parameters", extra={"user_id": user_id})
        return ok and user is not None and not user.deactivated, user

    async def check(self, user_id: str, password: str) -> bool:
        ok, _ = await self.verify(user_id, password)
        return ok
