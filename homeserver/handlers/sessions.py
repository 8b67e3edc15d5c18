"""Sessions: issuing access/refresh tokens at login, refreshing, revoking."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from homeserver.auth.access_tokens import AccessClaims, AccessTokenCodec, TokenError
from homeserver.auth.requester import ClientInfo
from homeserver.auth.session_cache import SessionCache
from homeserver.clock import Clock
from homeserver.config.model import AuthConfig
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from storage.database import Txn
from storage.stores.sessions import AccountUnavailableError, RefreshOutcome, SessionStore

REFRESH_PREFIX = "prt_"


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    expires_in_ms: int
    refresh_token: str | None
    session_id: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "access_token": self.access_token,
            "expires_in_ms": self.expires_in_ms,
        }
        if self.refresh_token is not None:
            out["refresh_token"] = self.refresh_token
        return out


class SessionHandler:
    def __init__(
        self,
        config: AuthConfig,
        clock: Clock,
        codec: AccessTokenCodec,
        store: SessionStore,
        cache: SessionCache,
        events: SecurityEventRecorder,
    ) -> None:
        self._config = config
        self._clock = clock
        self._codec = codec
        self._store = store
        self._cache = cache
        self._events = events

    def _access_token(
        self, user_id: str, device_id: str, session_id: str, with_refresh: bool, is_guest: bool
    ) -> tuple[str, int]:
        lifetime = (self._config.access_token_lifetime if with_refresh
                    else self._config.access_token_lifetime_without_refresh)
        token, _exp = self._codec.issue(user_id, device_id, session_id, lifetime, is_guest)
        return token, int(lifetime * 1000)

    async def verify_access_token(self, token: str) -> AccessClaims | None:
        """The claims of a genuine, unexpired, unrevoked access token, else None: for a
        token sent in a request body (registration's ``guest_access_token``)."""
        try:
            claims = self._codec.verify(token)
        except TokenError:
            return None
        if not await self._cache.is_active(claims.session_id):
            return None
        return claims

    async def start_session(self, user_id: str, device_id: str, want_refresh: bool,
                            consume: Callable[[Txn], None] | None = None) -> IssuedTokens:
        """A new login on a device; any earlier session of that device ends.

        The token's privileges (``is_guest``) are read from the users table in the
        transaction that creates the session, never passed in by the caller, and a
        deactivated or unknown user gets no session (403 ``M_USER_DEACTIVATED``).
        ``consume`` runs in that transaction first (a login token is spent there).
        """
        session_id = secrets.token_urlsafe(18)
        now = self._clock.time_msec()
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(32) if want_refresh else None
        try:
            started = await self._store.create_session(
                session_id, user_id, device_id, now,
                hash_refresh_token(refresh) if refresh else None,
                now + int(self._config.refresh_token_lifetime * 1000) if refresh else None,
                consume,
            )
        except AccountUnavailableError as e:
            raise MatrixError(403, "This account has been deactivated",
                              Codes.USER_DEACTIVATED) from e
        self._cache.invalidate(started.revoked)
        self._cache.mark_active(session_id)
        token, expires_in = self._access_token(user_id, device_id, session_id, want_refresh,
                                               started.is_guest)
        return IssuedTokens(token, expires_in, refresh, session_id)

    async def refresh(self, refresh_token: str, client: ClientInfo) -> IssuedTokens:
        """Spend a refresh token for a new pair. Reuse revokes the whole session."""
        new_refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
        now = self._clock.time_msec()
        result = await self._store.rotate_refresh_token(
            hash_refresh_token(refresh_token),
            hash_refresh_token(new_refresh),
            now + int(self._config.refresh_token_lifetime * 1000),
            now,
        )
        session = result.session
        ids = {"user_id": session.user_id, "device_id": session.device_id,
               "session_id": session.session_id} if session else {}
        if result.outcome is RefreshOutcome.OK and session is not None:
            await self._events.record("token_refresh", "success", client, **ids)
            token, expires_in = self._access_token(
                session.user_id, session.device_id, session.session_id, True, result.is_guest
            )
            return IssuedTokens(token, expires_in, new_refresh, session.session_id)
        if result.outcome is RefreshOutcome.REUSED and session is not None:
            self._cache.invalidate([session.session_id])
            await self._events.record(
                "refresh_token_reuse", "failure", client, reason="refresh token already used",
                **ids,
            )
            raise MatrixError(401, "Refresh token has already been used; session revoked",
                              Codes.UNKNOWN_TOKEN, soft_logout=False)
        if result.outcome is RefreshOutcome.REVOKED and session is not None:
            self._cache.invalidate([session.session_id])
        reason = {
            RefreshOutcome.UNKNOWN: "unknown refresh token",
            RefreshOutcome.EXPIRED: "refresh token expired",
            RefreshOutcome.REVOKED: "session revoked",
        }[result.outcome]
        await self._events.record("token_refresh", "failure", client, reason=reason, **ids)
        raise MatrixError(401, "Invalid refresh token", Codes.UNKNOWN_TOKEN, soft_logout=False)

    async def login_refused(self, user_id: str | None, reason: str) -> None:
        """Audit a refused login (wrong password, deactivated, provider said no)."""
        await self._events.record("login", "failure", None, user_id=user_id, reason=reason)

    async def login_pending(self, user_id: str) -> None:
        """Audit a right password whose login still needs the second factor."""
        await self._events.record("login", "pending", None, user_id=user_id,
                                  reason="second factor required")

    async def logged_out(self, event_type: str, user_id: str, device_id: str | None,
                         session_id: str | None) -> None:
        """Audit a ``logout`` / ``logout_all`` once its sessions are revoked."""
        await self._events.record(event_type, "success", None, user_id=user_id,
                                  device_id=device_id, session_id=session_id)

    async def revoke_session(self, session_id: str, reason: str) -> None:
        revoked = await self._store.revoke_session(session_id, reason, self._clock.time_msec())
        self._cache.invalidate(revoked or [session_id])

    async def revoke_devices(self, user_id: str, device_ids: list[str], reason: str) -> None:
        revoked = await self._store.revoke_device_sessions(
            user_id, device_ids, reason, self._clock.time_msec()
        )
        self._cache.invalidate(revoked)

    async def revoke_user(
        self, user_id: str, reason: str, except_session: str | None = None
    ) -> None:
        revoked = await self._store.revoke_user_sessions(
            user_id, reason, self._clock.time_msec(), except_session
        )
        self._cache.invalidate(revoked)
