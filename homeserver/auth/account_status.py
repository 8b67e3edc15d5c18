"""Locked and suspended accounts, enforced where every access token is checked.

* A **locked** account's tokens answer 401 ``M_USER_LOCKED`` with ``soft_logout: true``
  on every route but logout (as the spec's account locking and Synapse say), and its
  password login is refused the same way.
* A **suspended** account is read-only (the spec's "Account suspension"): creating
  rooms, sending events (redacting its own is allowed), joining, knocking, inviting,
  changing state or profile and uploading media answer 403 ``M_USER_SUSPENDED``;
  reading, leaving, logging out and deactivating still work.
* An account flagged **password_reset_required** cannot log in with its password
  (403 ``ORG_PARLEY_PASSWORD_RESET_REQUIRED``) until an admin or support resets it.

The gate wraps the authenticator (as ``MfaRequiredGate`` does), so the dispatch point
and the WebSocket both pass through it. Status is cached per user for a few seconds;
the admin handler invalidates it in this process at once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from homeserver.audit import context as audit_context
from homeserver.auth.requester import Authenticator, ClientInfo, Requester
from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.rate_classes import normalise
from storage.stores.roles import AccountStatus, RoleStore

USER_SUSPENDED = "M_USER_SUSPENDED"
PASSWORD_RESET_REQUIRED = "ORG_PARLEY_PASSWORD_RESET_REQUIRED"
STATUS_TTL_S = 5.0

# Routes a locked account may still call (normalised as in rate_classes.py).
LOCKED_ALLOWED = frozenset({("POST", "client/logout"), ("POST", "client/logout/all")})

# The writes a suspended account may not make (normalised templates). Leave, forget,
# redaction of its own events, receipts, typing, account data and logout stay allowed.
SUSPENDED_WRITES = frozenset({
    ("PUT", "client/rooms/{roomId}/send/{eventType}/{txnId}"),
    ("POST", "client/rooms/{roomId}/send/{eventType}"),
    ("PUT", "client/rooms/{roomId}/state/{eventType}"),
    ("PUT", "client/rooms/{roomId}/state/{eventType}/"),
    ("PUT", "client/rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("POST", "client/rooms/{roomId}/upgrade"),
    ("POST", "client/rooms/{roomId}/invite"),
    ("POST", "client/rooms/{roomId}/join"),
    ("POST", "client/join/{roomIdOrAlias}"),
    ("POST", "client/knock/{roomIdOrAlias}"),
    ("POST", "client/createRoom"),
    ("POST", "client/rooms/{roomId}/kick"),
    ("POST", "client/rooms/{roomId}/ban"),
    ("POST", "client/rooms/{roomId}/unban"),
    ("PUT", "client/profile/{userId}/displayname"),
    ("PUT", "client/profile/{userId}/avatar_url"),
    ("PUT", "client/profile/{userId}/{keyName}"),
    ("DELETE", "client/profile/{userId}/{keyName}"),
    ("PUT", "client/directory/room/{roomAlias}"),
    ("POST", "media/upload"),
    ("PUT", "media/upload/{serverName}/{mediaId}"),
    ("POST", "media/create"),
})


def is_suspended_write(method: str, template: str) -> bool:
    return (method, normalise(template)) in SUSPENDED_WRITES


class AccountStatusCache:
    """``user_id -> AccountStatus`` for a few seconds (restrictions set in this process
    apply at once through :meth:`invalidate`; other processes within the TTL)."""

    def __init__(self, store: RoleStore, clock: Clock, ttl: float = STATUS_TTL_S,
                 max_entries: int = 100_000) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[AccountStatus, float]] = OrderedDict()
        store.on_change.append(self.invalidate)

    async def get(self, user_id: str) -> AccountStatus:
        now = self._clock.time()
        entry = self._entries.get(user_id)
        if entry is not None and now - entry[1] < self._ttl:
            return entry[0]
        status = await self._store.get_status(user_id) or AccountStatus()
        self._entries[user_id] = (status, now)
        self._entries.move_to_end(user_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return status

    def invalidate(self, user_id: str) -> None:
        self._entries.pop(user_id, None)

    async def check_login(self, user_id: str) -> None:
        """After the right password: refuse a locked account or one that must have its
        password reset first (PasswordAuth.account_check)."""
        status = await self.get(user_id)
        if status.locked:
            raise MatrixError(401, "This account has been locked", Codes.USER_LOCKED,
                              soft_logout=True)
        if status.password_reset_required:
            raise MatrixError(403, "An administrator requires a password reset for this "
                              "account: contact your server's support",
                              PASSWORD_RESET_REQUIRED)


class AccountStatusGate:
    """An :class:`Authenticator` wrapper refusing locked and (on writes) suspended
    accounts."""

    def __init__(self, inner: Authenticator, cache: AccountStatusCache) -> None:
        self._inner = inner
        self._cache = cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def authenticate(self, token: str, client: ClientInfo) -> Requester:
        requester = await self._inner.authenticate(token, client)
        status = await self._cache.get(requester.user_id)
        if not (status.locked or status.suspended):
            return requester
        ctx = audit_context.current()
        route = getattr(getattr(ctx.request, "route", None), "template", None) if ctx else None
        method = getattr(getattr(ctx.request, "route", None), "method", "GET") if ctx else "GET"
        if status.locked:
            if isinstance(route, str) and (method, normalise(route)) in LOCKED_ALLOWED:
                return requester
            raise MatrixError(401, "This account has been locked", Codes.USER_LOCKED,
                              soft_logout=True)
        if isinstance(route, str) and is_suspended_write(method, route):
            raise MatrixError(403, "This account is suspended: it can read but not write",
                              USER_SUSPENDED)
        return requester
