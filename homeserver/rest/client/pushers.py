"""GET /pushers and POST /pushers/set. Pushers are stored only; delivery comes later.

Validation follows the spec: ``kind: null`` deletes; otherwise app_display_name,
device_display_name, lang and data are required; pushkey is at most 512 bytes and
app_id at most 64 characters. An ``http`` pusher's ``data.url`` MUST be HTTPS with the
path ``/_matrix/push/v1/notify`` (Synapse also accepts http://; the spec does not).
An ``email`` pusher must name an email address the user has bound as a 3PID, and Parley
stores no 3PIDs (privacy by design), so it is refused with Synapse's answer for an
unbound address, ``M_THREEPID_NOT_FOUND``. Other kinds are unknown (400).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from storage.stores.pushers import Pusher, PusherStore

PUSH_GATEWAY_PATH = "/_matrix/push/v1/notify"
MAX_PUSHKEY_BYTES = 512
MAX_DATA_BYTES = 8192
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_TEXT = {"type": "string", "maxLength": 1000}
SET_PUSHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["kind", "app_id", "pushkey"],
    "properties": {
        "kind": {"type": ["string", "null"], "maxLength": 64},
        "app_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "pushkey": {"type": "string", "minLength": 1},
        "app_display_name": _TEXT,
        "device_display_name": _TEXT,
        "profile_tag": {"type": "string", "maxLength": 255},
        "lang": {"type": "string", "maxLength": 64},
        "data": {
            "type": "object",
            "properties": {"url": {"type": "string", "maxLength": 2048},
                           # Only event_id_only is defined; any other string means the
                           # full format, as in Synapse (SyTest sends "id_event_only").
                           "format": {"type": "string", "maxLength": 64}},
        },
        "append": {"type": "boolean"},
    },
}
REQUIRED_WHEN_SETTING = ("app_display_name", "device_display_name", "lang", "data")


def check_gateway_url(url: Any) -> None:
    if not isinstance(url, str):
        raise MatrixError(400, "data.url is required for an http pusher", Codes.MISSING_PARAM)
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as e:
        raise MatrixError(400, "data.url is not a valid URL", Codes.INVALID_PARAM) from e
    # The spec says HTTPS; like Synapse, plain HTTP is accepted too (gateways on a
    # private network, local development).
    if parts.scheme not in ("https", "http") or not host:
        raise MatrixError(400, "data.url must be an http(s) URL", Codes.INVALID_PARAM)
    if parts.path != PUSH_GATEWAY_PATH:
        raise MatrixError(400, f"data.url must have the path {PUSH_GATEWAY_PATH}",
                          Codes.INVALID_PARAM)


def _pusher_json(p: Pusher) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pushkey": p.pushkey, "kind": p.kind, "app_id": p.app_id,
        "app_display_name": p.app_display_name, "device_display_name": p.device_display_name,
        "lang": p.lang, "data": p.data,
    }
    if p.profile_tag is not None:
        out["profile_tag"] = p.profile_tag
    return out


class PusherServlets:
    def __init__(self, clock: Clock, store: PusherStore) -> None:
        self._clock = clock
        self._store = store

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/pushers"), self.on_get)
        router.add("POST", client_paths("/pushers/set"), self.on_set, body_schema=SET_PUSHER_SCHEMA)

    async def on_get(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, {"pushers": [_pusher_json(p) for p in await self._store.get_pushers(r.user_id)]}

    async def on_set(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        body = req.body
        if len(body["pushkey"].encode("utf-8")) > MAX_PUSHKEY_BYTES:
            raise MatrixError(400, "pushkey may be at most 512 bytes", Codes.INVALID_PARAM)
        kind = body["kind"]
        if kind is None:
            await self._store.delete_pusher(r.user_id, body["app_id"], body["pushkey"])
            return 200, {}
        missing = [k for k in REQUIRED_WHEN_SETTING if k not in body]
        if missing:
            raise MatrixError(400, f"Missing parameters: {', '.join(missing)}", Codes.MISSING_PARAM)
        data = body["data"]
        if len(json.dumps(data, ensure_ascii=False).encode("utf-8")) > MAX_DATA_BYTES:
            raise MatrixError(400, "data is too large", Codes.TOO_LARGE)
        if kind == "http":
            check_gateway_url(data.get("url"))
        elif kind == "email":
            if body["app_id"] != "m.email":
                raise MatrixError(400, "An email pusher's app_id must be m.email", Codes.INVALID_PARAM)
            if not _EMAIL.fullmatch(body["pushkey"]):
                raise MatrixError(400, "An email pusher's pushkey must be an email address",
                                  Codes.INVALID_PARAM)
            raise MatrixError(400, "Email not found", "M_THREEPID_NOT_FOUND")
        else:
            raise MatrixError(400, "Unknown pusher kind", Codes.INVALID_PARAM)
        await self._store.set_pusher(Pusher(
            user_id=r.user_id, app_id=body["app_id"], pushkey=body["pushkey"], kind=kind,
            app_display_name=body["app_display_name"],
            device_display_name=body["device_display_name"], profile_tag=body.get("profile_tag"),
            lang=body["lang"], data=data, device_id=r.device_id, created_ts=self._clock.time_msec(),
        ), remove_for_other_users=not body.get("append", False))
        return 200, {}
