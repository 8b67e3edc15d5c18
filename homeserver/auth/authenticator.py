"""Verifies the bearer token of every authenticated request."""

from __future__ import annotations

import logging

from twisted.internet import defer

from homeserver.auth.access_tokens import AccessTokenCodec, TokenError
from homeserver.auth.requester import ClientInfo, Requester
from homeserver.auth.session_cache import SessionCache
from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from storage.stores.devices import DeviceStore

logger = logging.getLogger(__name__)

LAST_SEEN_INTERVAL_MS = 5 * 60 * 1000


class TokenAuthenticator:
    def __init__(
        self, codec: AccessTokenCodec, cache: SessionCache, devices: DeviceStore, clock: Clock
    ) -> None:
        self._codec = codec
        self._cache = cache
        self._devices = devices
        self._clock = clock
        self._last_seen: dict[tuple[str, str], int] = {}

    async def authenticate(self, token: str, client: ClientInfo) -> Requester:
        try:
            claims = self._codec.verify(token)
        except TokenError as e:
            if e.expired:
                raise MatrixError(401, "Access token has expired", Codes.UNKNOWN_TOKEN,
                                  soft_logout=True) from e
            raise MatrixError(401, "Invalid access token", Codes.UNKNOWN_TOKEN,
                              soft_logout=False) from e
        if not await self._cache.is_active(claims.session_id):
            raise MatrixError(401, "Access token has been revoked", Codes.UNKNOWN_TOKEN,
                              soft_logout=False)
        self._note_seen(claims.user_id, claims.device_id, client)
        return Requester(
            user_id=claims.user_id,
            device_id=claims.device_id or None,
            session_id=claims.session_id,
            is_guest=claims.is_guest,
            token_id=claims.token_id,
        )

    def _note_seen(self, user_id: str, device_id: str, client: ClientInfo) -> None:
        """Update the device's last-seen at most every few minutes, in the background."""
        if not device_id:
            return
        now = self._clock.time_msec()
        key = (user_id, device_id)
        if now - self._last_seen.get(key, 0) < LAST_SEEN_INTERVAL_MS:
            return
        self._last_seen[key] = now
        if len(self._last_seen) > 100_000:
            self._last_seen.clear()
        d = defer.ensureDeferred(
            self._devices.mark_seen(user_id, device_id, now, client.ip, client.user_agent)
        )
        d.addErrback(lambda f: logger.warning("could not update device last-seen: %s",
                                              f.getErrorMessage()))
