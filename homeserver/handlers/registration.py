"""Creating accounts: client registration, the admin CLI and shared-secret registration."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.auth.password_policy import PasswordPolicy
from homeserver.auth.passwords import PasswordHasher
from homeserver.clock import Clock
from homeserver.config.model import RegistrationConfig
from homeserver.handlers.security_events import SecurityEventRecorder
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
        spam_check: Callable[[str], Awaitable[None]] | None = None,
        events: SecurityEventRecorder | None = None,
    ) -> None:
        # The audit trail: registrations are recorded here, not by the servlets.
        self._events = events
        # Plugin gates (plugins/host.py): raise a MatrixError to refuse.
        self._spam_check = spam_check
        self.registration_check: Callable[[str | None, str, str | None, bool],
                                          Awaitable[None]] | None = None
        self.server_name = server_name
        self._config = config
        self._clock = clock
        self._users = users
        self._hasher = hasher
        self._policy = policy
        self._reserved = [re.compile(p) for p in config.reserved_usernames]
        # Application services (homeserver/appservice/handler.py, set by app.py): their
        # exclusive user namespaces are refused here (M_EXCLUSIVE); /register asks them
        # about as_token registration.
        self.appservices: Any = None

    async def record_registration(self, outcome: str, user_id: str | None = None, *,
                                  reason: str | None = None,
                                  details: dict[str, Any] | None = None) -> None:
        """Audit one registration outcome (``success``, ``replay``, ``failure``); the
        request's IP and user agent come from the request being served."""
        if self._events is not None:
            await self._events.record("register", outcome, None, user_id=user_id,
                                      reason=reason, details=details)

    def check_username_format(self, localpart: str) -> str:
        """Validate a requested localpart; returns the user id. Raises Matrix errors."""
        check_localpart(localpart, self.server_name)
        if any(p.fullmatch(localpart) for p in self._reserved):
            raise MatrixError(400, "This user ID is reserved", Codes.EXCLUSIVE)
        if self.appservices is not None:
            self.appservices.check_user_not_exclusive(user_id(localpart, self.server_name))
        return user_id(localpart, self.server_name)

    async def _check_spam(self, uid: str) -> None:
        """Plugins' ``check_username_for_spam`` (a MatrixError when one refuses)."""
        if self._spam_check is not None:
            await self._spam_check(uid)

    async def check_registration(self, localpart: str | None, ip: str, user_agent: str | None,
                                 is_guest: bool = False) -> None:
        """Plugins' ``check_registration_for_spam``, just before an account is created."""
        if self.registration_check is not None:
            uid = user_id(localpart, self.server_name) if localpart else None
            await self.registration_check(uid, ip, user_agent, is_guest)

    async def check_username_available(self, localpart: str) -> str:
        uid = self.check_username_format(localpart)
        await self._check_spam(uid)
        if await self._users.user_exists(uid):
            raise MatrixError(400, "User ID already taken.", Codes.USER_IN_USE)
        return uid

    def check_password_policy(self, password: str) -> None:
        self._policy.check(password)

    async def hash_password(self, password: str) -> str:
        """A policy-checked hash, for a UIA session to remember until it completes
        (never the password itself)."""
        self._policy.check(password)
        return await self._hasher.hash(password)

    async def create_account(
        self,
        localpart: str | None,
        password: str | None,
        is_admin: bool = False,
        is_guest: bool = False,
        enforce_policy: bool = True,
        consume: Callable[[Txn], None] | None = None,
        password_hash: str | None = None,
        spend: Callable[[Txn, str], None] | None = None,
    ) -> str:
        """Create the account; a missing localpart gets a generated one.

        ``consume`` (from :meth:`UserInteractiveAuth.consumer`) spends the UIA session
        and registration-token use in the account's own transaction: of concurrent
        requests replaying one session, exactly one creates an account. ``spend`` does
        the same and is also told the new user id (to record it with the session).
        ``password_hash`` is used when no ``password`` is given: the hash a UIA session
        remembered from an earlier request (the policy was checked then).
        """
        step: Callable[[Txn, str], None] | None = None
        if consume is not None or spend is not None:
            def step(txn: Txn, uid: str) -> None:
                if consume is not None:
                    consume(txn)
                if spend is not None:
                    spend(txn, uid)
        try:
            return await self._create_account(localpart, password, is_admin, is_guest,
                                              enforce_policy, step, password_hash)
        except GrantSpentError as e:
            raise _grant_spent(e) from e

    async def upgrade_guest(
        self,
        uid: str,
        password: str | None,
        password_hash: str | None,
        spend: Callable[[Txn, str], None] | None = None,
    ) -> None:
        """Make the guest account ``uid`` a full account (the spec's guest upgrade),
        spending ``spend``'s grants in the same transaction. The caller proved it holds
        that guest's access token."""
        if password is not None:
            self._policy.check(password)
            password_hash = await self._hasher.hash(password)
        if password_hash is None:
            raise MatrixError(400, "Missing parameter: password", Codes.MISSING_PARAM)
        try:
            upgraded = await self._users.upgrade_guest(uid, password_hash, _bound(spend, uid))
        except GrantSpentError as e:
            raise _grant_spent(e) from e
        if not upgraded:
            raise guest_credentials_required()

    async def _create_account(
        self,
        localpart: str | None,
        password: str | None,
        is_admin: bool,
        is_guest: bool,
        enforce_policy: bool,
        step: Callable[[Txn, str], None] | None,
        password_hash: str | None,
    ) -> str:
        if password is not None and enforce_policy:
            self._policy.check(password)
        if password is not None:
            password_hash = await self._hasher.hash(password)
        now = self._clock.time_msec()
        if localpart is None:
            for _ in range(10):
                candidate = "u" + "".join(secrets.choice(string.digits) for _ in range(10))
                try:
                    uid = user_id(candidate, self.server_name)
                    await self._users.create_user(uid, password_hash, now, is_admin, is_guest,
                                                  consume=_bound(step, uid))
                    return uid
                except UserInUseError:
                    continue
            raise MatrixError(500, "Could not allocate a user ID", Codes.UNKNOWN)
        uid = self.check_username_format(localpart)
        await self._check_spam(uid)
        try:
            # Like Synapse, a new account's display name starts as its localpart.
            await self._users.create_user(uid, password_hash, now, is_admin, is_guest,
                                          displayname=None if is_guest else localpart,
                                          consume=_bound(step, uid))
        except UserInUseError as e:
            raise MatrixError(400, "User ID already taken.", Codes.USER_IN_USE) from e
        return uid


def _bound(step: Callable[[Txn, str], None] | None, uid: str) -> Callable[[Txn], None] | None:
    """The account transaction's grant-spending step, told which user id it creates."""
    if step is None:
        return None
    return lambda txn: step(txn, uid)


def _grant_spent(e: GrantSpentError) -> MatrixError:
    if e.what == "registration_token":
        return MatrixError(403, "Registration token is no longer valid", Codes.FORBIDDEN)
    return MatrixError(400, "Unknown session ID", Codes.UNKNOWN)


def guest_credentials_required() -> MatrixError:
    """What registering a taken user id with a wrong guest token gets (as Synapse)."""
    return MatrixError(403, "Cannot register taken user ID without valid guest credentials "
                       "for that user.", Codes.FORBIDDEN)
