"""Small endpoint families: GET /voip/turnServer, the third-party lookup API,
GET /notifications and GET /mutual_rooms.

* TURN credentials are Synapse's time-limited shared-secret scheme (the TURN REST API
  coturn's ``use-auth-secret`` implements): ``username = "<expiry>:<user_id>"``,
  ``password = base64(HMAC-SHA1(secret, username))``. With no TURN configured the answer
  is 404 ``M_NOT_FOUND`` (MSC4166): the spec's 200 requires username/password/uris/ttl,
  so Synapse's ``{}`` would break the schema.
* Third-party networks need application services (bridges), which Parley does not run:
  no protocols, and 404 ``M_NOT_FOUND`` (with an errcode, unlike Synapse) for lookups.
* Notifications: the push actions recorded per event (``handlers/push_actions.py``),
  newest first, only events the user may see and has not yet read (as Synapse: a read
  receipt empties the list); ``next_token`` is omitted when there are no more results
  (the schema forbids null).
* Mutual rooms (v1): rooms where both users' membership is ``join``, by room id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.clock import Clock
from homeserver.config.model import VoipConfig
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.opaque_tokens import Str, decode_token, encode_token
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import split_user_id
from storage.stores.room_members import RoomMemberStore

MUTUAL_ROOMS_BATCH = 100
MAX_NOTIFICATIONS_LIMIT = 1000
DEFAULT_NOTIFICATIONS_LIMIT = 50  # as Synapse
MAX_TOKEN_DIGITS = 18
MAX_CURSOR = 400
# (user_id, device_id, before position or None, limit, only highlights) -> response body.
NotificationsSource = Callable[[str, str | None, int | None, int, bool], Awaitable[dict[str, Any]]]


def turn_credentials(secret: str, user_id: str, now_ms: int, lifetime_s: float) -> tuple[str, str]:
    """(username, password) valid until now + lifetime, for a TURN server sharing ``secret``."""
    expiry = int((now_ms / 1000) + lifetime_s)
    username = f"{expiry}:{user_id}"
    mac = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1)
    return username, base64.b64encode(mac.digest()).decode("ascii")


def _encode_cursor(room_id: str) -> str:
    return encode_token([room_id])


def _decode_cursor(token: str) -> str:
    room_id: str = decode_token(token, MAX_CURSOR, (Str(prefix="!"),))[0]
    return room_id


class MiscServlets:
    def __init__(self, clock: Clock, voip: VoipConfig, members: RoomMemberStore,
                 notifications: NotificationsSource | None = None) -> None:
        self._clock = clock
        self._voip = voip
        self._members = members
        # PushActionsHandler.get_notifications (None: the list is empty).
        self.notifications = notifications

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/voip/turnServer"), self.on_turn_server)
        # /thirdparty/*: homeserver/rest/client/thirdparty.py (application services).
        router.add("GET", client_paths("/notifications"), self.on_notifications)
        router.add("GET", client_paths("/mutual_rooms", ("v1",)), self.on_mutual_rooms)

    async def on_turn_server(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        if not self._voip.turn_uris or not self._voip.turn_shared_secret:
            raise MatrixError(404, "No TURN server configured", Codes.NOT_FOUND)
        username, password = turn_credentials(self._voip.turn_shared_secret, r.user_id,
                                              self._clock.time_msec(), self._voip.turn_user_lifetime)
        return 200, {"username": username, "password": password,
                     "uris": list(self._voip.turn_uris),
                     "ttl": max(1, int(self._voip.turn_user_lifetime))}

    async def on_notifications(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        limit = req.query_int("limit")
        if limit is not None and not 0 <= limit <= 2**31:
            raise MatrixError(400, "Invalid limit", Codes.INVALID_PARAM)
        raw_from = req.query("from")
        before: int | None = None
        if raw_from is not None:
            if not (raw_from.isascii() and raw_from.isdigit()) or len(raw_from) > MAX_TOKEN_DIGITS:
                raise MatrixError(400, "Invalid 'from' token", Codes.INVALID_PARAM)
            before = int(raw_from)
        only_highlight = req.query("only") == "highlight"
        if self.notifications is None:
            return 200, {"notifications": []}
        size = min(DEFAULT_NOTIFICATIONS_LIMIT if limit is None else limit, MAX_NOTIFICATIONS_LIMIT)
        return 200, await self.notifications(r.user_id, r.device_id, before, size, only_highlight)

    async def on_mutual_rooms(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        other = req.query("user_id")
        if other is None:
            raise MatrixError(400, "Missing user_id", Codes.MISSING_PARAM)
        split_user_id(other)
        if len(other.encode("utf-8")) > 255:
            raise MatrixError(400, "Invalid user ID", Codes.INVALID_PARAM)
        if other == r.user_id:
            raise MatrixError(400, "You cannot request a list of shared rooms with yourself",
                              Codes.INVALID_PARAM)
        raw_from = req.query("from")
        after = _decode_cursor(raw_from) if raw_from is not None else None
        mine = {m.room_id for m in await self._members.rooms_for_user(r.user_id)}
        theirs = {m.room_id for m in await self._members.rooms_for_user(other)}
        shared = sorted(mine & theirs)
        page = [rid for rid in shared if after is None or rid > after]
        out: dict[str, Any] = {"joined": page[:MUTUAL_ROOMS_BATCH], "count": len(shared)}
        if len(page) > MUTUAL_ROOMS_BATCH:
            out["next_batch"] = _encode_cursor(page[MUTUAL_ROOMS_BATCH - 1])
        return 200, out
