"""OpenID tokens: issuing them to a user and resolving them for a third party.

A token proves "this bearer was given the token by user X" for one hour; the only
thing it can be exchanged for is X's user id (``/openid/userinfo``). It is not an
access token and the client-server API never accepts it.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from storage.stores.openid_tokens import OpenIdTokenStore

# Synapse's lifetime; the spec leaves it to the server.
OPENID_TOKEN_LIFETIME_S = 3600


def hash_openid_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class OpenIdHandler:
    def __init__(self, server_name: str, clock: Clock, store: OpenIdTokenStore) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store

    async def issue_token(self, user_id: str) -> dict[str, Any]:
        """A fresh token for ``user_id``, as the spec's OpenIdCredentials object."""
        token = secrets.token_urlsafe(32)
        now = self._clock.time_msec()
        if not await self._store.add_token(hash_openid_token(token), user_id, now,
                                           now + OPENID_TOKEN_LIFETIME_S * 1000):
            raise MatrixError(403, "This account has been deactivated", Codes.USER_DEACTIVATED)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": self._server_name,
            "expires_in": OPENID_TOKEN_LIFETIME_S,
        }

    async def user_for_token(self, token: str) -> str | None:
        """The user who issued ``token`` if it is still valid, else None."""
        if not token:
            return None
        return await self._store.get_user_id(hash_openid_token(token), self._clock.time_msec())
