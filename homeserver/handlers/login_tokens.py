"""Login tokens: a signed-in client signs in another one (spec: ``POST
/_matrix/client/v1/login/get_token`` and the ``m.login.token`` login type).

Off unless ``login_tokens.enabled``. A token is random, single-use, short-lived
(``login_tokens.lifetime``), stored only as its SHA-256 hash with the user, the issuing
device and session. It is spent in the very transaction that starts the new session
(:meth:`LoginTokenStore.consumer`), so two logins racing with one token get exactly one
session. Ending the issuing session (logout, password change, deactivation) ends its
unspent tokens. The new session's privileges come from the stored account, never from
the token row.

MFA: the issuing session had to pass UIA (including the TOTP stage of an enrolled user)
to get the token, so a login with it does not ask for the second factor again.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from homeserver.auth.password_auth import PasswordAuth
from homeserver.auth.requester import ClientInfo
from homeserver.clock import Clock
from homeserver.config.model import LoginTokensConfig
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.handlers.sessions import IssuedTokens
from homeserver.http.errors import Codes, MatrixError
from storage.stores.login_tokens import LoginTokenSpentError, LoginTokenState, LoginTokenStore

LOGIN_TOKEN_TYPE = "m.login.token"
TOKEN_PREFIX = "plt_"
MAX_TOKEN_LENGTH = 512  # what /login accepts in ``token`` (its body schema)


def hash_login_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class IssuedLoginToken:
    login_token: str
    expires_in_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"login_token": self.login_token, "expires_in_ms": self.expires_in_ms}


def invalid_token() -> MatrixError:
    """What any unusable token gets (as Synapse): unknown, expired and spent alike."""
    return MatrixError(403, "Invalid login token", Codes.FORBIDDEN)


class LoginTokenHandler:
    def __init__(
        self,
        config: LoginTokensConfig,
        clock: Clock,
        store: LoginTokenStore,
        devices: DeviceHandler,
        events: SecurityEventRecorder,
        password_auth: PasswordAuth | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._store = store
        self._devices = devices
        self._events = events
        # For detection's login lockout (its ``lockout_check``, set after start-up): a
        # locked account or client IP gets its 429 here too.
        self._password_auth = password_auth

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    async def issue(self, user_id: str, device_id: str | None, session_id: str,
                    client: ClientInfo) -> IssuedLoginToken:
        """A new token for the (UIA-checked) requester's account."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        lifetime_ms = int(self._config.lifetime * 1000)
        now = self._clock.time_msec()
        stored = await self._store.add_token(hash_login_token(token), user_id, device_id,
                                             session_id, now, now + lifetime_ms)
        if not stored:  # deactivated between the access-token check and now
            await self._events.record("login_token_issue", "failure", client,
                                      user_id=user_id, device_id=device_id,
                                      session_id=session_id, reason="deactivated")
            raise MatrixError(403, "This account has been deactivated",
                              Codes.USER_DEACTIVATED)
        await self._events.record("login_token_issue", "success", client, user_id=user_id,
                                  device_id=device_id, session_id=session_id)
        return IssuedLoginToken(token, lifetime_ms)

    async def login(self, token: str, params: dict[str, Any],
                    client: ClientInfo) -> tuple[str, str, IssuedTokens]:
        """Spend ``token`` for a new session on a new (or the named) device: returns
        (user id, device id, tokens). 403 ``M_FORBIDDEN`` for any unusable token,
        403 ``M_USER_DEACTIVATED`` for a deactivated account."""
        token_hash = hash_login_token(token)
        record = await self._store.get_token(token_hash)
        now = self._clock.time_msec()
        state = LoginTokenState.VALID
        if record is None:
            state = LoginTokenState.UNKNOWN
        elif record.used_ts is not None:
            state = LoginTokenState.USED
        elif record.expires_ts <= now:
            state = LoginTokenState.EXPIRED
        elif not await self._store.session_active(record.session_id):
            state = LoginTokenState.SESSION_ENDED
        if record is None or state is not LoginTokenState.VALID:
            await self._failed(client, record.user_id if record else None, state.value)
            raise invalid_token()
        user_id = record.user_id
        await self._account_checks(user_id, client)
        try:
            device_id, tokens = await self._devices.login_device(
                user_id, params.get("device_id"), params.get("initial_device_display_name"),
                bool(params.get("refresh_token")), client, via=LOGIN_TOKEN_TYPE,
                consume=self._store.consumer(token_hash, user_id, now),
            )
        except LoginTokenSpentError as e:  # a concurrent login spent it first
            await self._failed(client, user_id, LoginTokenState.USED.value)
            raise invalid_token() from e
        except MatrixError as e:
            if e.errcode == Codes.USER_DEACTIVATED:
                await self._failed(client, user_id, "deactivated")
            raise
        return user_id, device_id, tokens

    async def _account_checks(self, user_id: str, client: ClientInfo) -> None:
        """What every other login path applies once the credential is good: the
        detection lockout (429) and the admin restrictions (a locked account, one whose
        password must be reset), both hooks of PasswordAuth set at start-up."""
        if self._password_auth is None:
            return
        if self._password_auth.lockout_check is not None:
            await self._password_auth.lockout_check(user_id)
        account_check = getattr(self._password_auth, "account_check", None)
        if account_check is not None:
            try:
                await account_check(user_id)
            except MatrixError as e:
                await self._failed(client, user_id, e.errcode)
                raise

    async def _failed(self, client: ClientInfo, user_id: str | None, reason: str) -> None:
        await self._events.record("login", "failure", client, user_id=user_id,
                                  reason=reason, details={"via": LOGIN_TOKEN_TYPE})
