"""Checking a user's password (login and the UIA password stage share this)."""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.auth.passwords import PasswordHasher
from homeserver.http.errors import MatrixError
from storage.stores.users import UserStore

logger = logging.getLogger(__name__)


class PasswordCheck(enum.Enum):
    """The outcome of a password check; the values are security-event reasons."""

    OK = "ok"
    UNKNOWN_USER = "unknown_user"
    BAD_PASSWORD = "bad_password"
    DEACTIVATED = "deactivated"  # the right password, but the account is deactivated


class PasswordAuth:
    def __init__(self, server_name: str, users: UserStore, hasher: PasswordHasher) -> None:
        self._server_name = server_name
        self._users = users
        self._hasher = hasher
        # Login lockout (homeserver/detection): fn(user_id) raising a 429 for a locked
        # account or client IP, run before any hashing (async: the state may be in Redis).
        self.lockout_check: Callable[[str | None], Awaitable[None]] | None = None
        # Plugins (plugins/host.py): an external password check (True/False, None: the
        # local hash decides), and extra login types with their login function.
        self.external_check: Callable[[str, str], Awaitable[bool | None]] | None = None
        self.login_types: Callable[[], list[str]] = list
        self.provider_login: Callable[[str, dict[str, Any]], Awaitable[str | None]] | None = None
        # Admin restrictions (homeserver/auth/account_status.py): fn(user_id) raising for a
        # locked account or one whose password must be reset, once the password matched.
        self.account_check: Callable[[str], Awaitable[None]] | None = None

    async def login_with_provider(self, login_type: str,
                                  body: dict[str, Any]) -> tuple[str | None, PasswordCheck]:
        """A plugin's login type: the local, active account it vouches for."""
        user_id = await self.provider_login(login_type, body) if self.provider_login else None
        if user_id is None:
            return None, PasswordCheck.BAD_PASSWORD
        user = await self._users.get_user(user_id)
        if user is None:
            return None, PasswordCheck.UNKNOWN_USER
        if user.deactivated:
            return user.user_id, PasswordCheck.DEACTIVATED
        if self.account_check is not None:
            await self.account_check(user.user_id)
        return user.user_id, PasswordCheck.OK

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

    async def verify(self, user_id: str | None, password: str) -> PasswordCheck:
        """Check a password. Always costs one Argon2 verify (against a dummy hash for an
        unknown or unresolvable user, or an account without a password), so the answer
        time does not tell whether an account exists; and the account's state is only
        looked at once the password has matched, so a wrong password never learns it.
        A locked-out account or IP gets its 429 first, without a hash."""
        if self.lockout_check is not None:
            await self.lockout_check(user_id)
        user = await self._users.get_user(user_id) if user_id is not None else None
        if user is not None and self.external_check is not None:
            external = await self.external_check(user.user_id, password)
            if external is not None:  # a plugin decided: no local hash involved
                if not external:
                    return PasswordCheck.BAD_PASSWORD
                if user.deactivated:
                    return PasswordCheck.DEACTIVATED
                if self.account_check is not None:
                    await self.account_check(user.user_id)
                return PasswordCheck.OK
        ok, needs_rehash = await self._hasher.verify(user.password_hash if user else None,
                                                     password)
        if user is None:
            return PasswordCheck.UNKNOWN_USER
        if not ok:
            return PasswordCheck.BAD_PASSWORD
        if user.deactivated:
            return PasswordCheck.DEACTIVATED
        if self.account_check is not None:
            await self.account_check(user.user_id)
        if user.password_hash and needs_rehash:
            await self._rehash(user.user_id, user.password_hash, password)
        return PasswordCheck.OK

    async def _rehash(self, user_id: str, old_hash: str, password: str) -> None:
        """Upgrade a hash to the current parameters; skipped (until the next login)
        when the hashing pool is saturated, rather than failing the login."""
        try:
            new_hash = await self._hasher.hash(password)
        except MatrixError:
            return
        await self._users.replace_password_hash(user_id, old_hash, new_hash)
        logger.info("rehashed password with current parameters", extra={"user_id": user_id})

    async def check(self, user_id: str, password: str) -> bool:
        """The UIA password stage: only the right password of an active account passes."""
        return await self.verify(user_id, password) is PasswordCheck.OK
