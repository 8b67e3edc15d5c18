"""Creating accounts: client registration, the admin CLI and shared-secret registration."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Callable

from homeserver.auth.password_policy import PasswordPolicy
from homeserver.auth.passwords import PasswordHasher
from homeserver.clock import Clock
from homeserver.config.model import RegistrationConfig
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import check_localpart, user_id
from storage.database import Txn
from storage.stores.ui_auth import GrantSpentError
from storage.stores.users import UserInUseError, UserStore


class RegistrationHandler:
    def __init__(
        self,
        server_name: str,
        config: RegistrationConfig,
        clock: Clock,
        users: UserStore,
        hasher: PasswordHasher,
        policy: PasswordPolicy,
        spam_check: Callable[[str], bool] = lambda _uid: False,
    ) -> None:
        self._spam_check = spam_check
        self.server_name = server_name
        self._config = config
        self._clock = clock
        self._users = users
        self._hasher = hasher
        self._policy = policy
        self._reserved = [re.compile(p) for p in config.reserved_usernames]

    def check_username_format(self, localpart: str) -> str:
        """Validate a requested localpart; returns the user id. Raises Matrix errors."""
        check_localpart(localpart, self.server_name)
        if any(p.fullmatch(localpart) for p in self._reserved):
            raise MatrixError(400, "This user ID is reserved", Codes.EXCLUSIVE)
        uid = user_id(localpart, self.server_name)
        if self._spam_check(uid):
            raise MatrixError(403, "This user ID is not allowed", Codes.FORBIDDEN)
        return uid

    async def check_username_available(self, localpart: str) -> str:
        uid = self.check_username_format(localpart)
        if await self._users.user_exists(uid):
            raise MatrixError(400, "User ID already taken.", Codes.USER_IN_USE)
        return uid

    def check_password_policy(self, password: str) -> None:
        self._policy.check(password)

    async def create_account(
        self,
        localpart: str | None,
        password: str | None,
        is_admin: bool = False,
        is_guest: bool = False,
        enforce_policy: bool = True,
        consume: Callable[[Txn], None] | None = None,
    ) -> str:
        """Create the account; a missing localpart gets a generated one.

        ``consume`` (from :meth:`UserInteractiveAuth.consumer`) spends the UIA session
        and registration-token use in the account's own transaction: of concurrent
        requests replaying one session, exactly one creates an account.
        """
        try:
            return await self._create_account(localpart, password, is_admin, is_guest,
                                              enforce_policy, consume)
        except GrantSpentError as e:
            if e.what == "registration_token":
                raise MatrixError(403, "Registration token is no longer valid",
                                  Codes.FORBIDDEN) from e
            raise MatrixError(400, "Unknown session ID", Codes.UNKNOWN) from e

    async def _create_account(
        self,
        localpart: str | None,
        password: str | None,
        is_admin: bool,
        is_guest: bool,
        enforce_policy: bool,
        consume: Callable[[Txn], None] | None,
    ) -> str:
        if password is not None and enforce_policy:
            self._policy.check(password)
        password_hash = await self._hasher.hash(password) if password is not None else None
        now = self._clock.time_msec()
        if localpart is None:
            for _ in range(10):
                candidate = "u" + "".join(secrets.choice(string.digits) for _ in range(10))
                try:
                    uid = user_id(candidate, self.server_name)
                    await self._users.create_user(uid, password_hash, now, is_admin, is_guest,
                                                  consume=consume)
                    return uid
                except UserInUseError:
                    continue
            raise MatrixError(500, "Could not allocate a user ID", Codes.UNKNOWN)
        uid = self.check_username_format(localpart)
        try:
            # Like Synapse, a new account's display name starts as its localpart.
            await self._users.create_user(uid, password_hash, now, is_admin, is_guest,
                                          displayname=None if is_guest else localpart,
                                          consume=consume)
        except UserInUseError as e:
            raise MatrixError(400, "User ID already taken.", Codes.USER_IN_USE) from e
        return uid
