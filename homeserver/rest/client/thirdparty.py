"""Third-party networks bridged by application services (spec "Third-party Networks"):
GET /thirdparty/protocols, /thirdparty/protocol/{protocol},
/thirdparty/user[/{protocol}], /thirdparty/location[/{protocol}], each proxied to the
services' ``/_matrix/app/v1/thirdparty/...`` (homeserver/appservice/handler.py)."""

from __future__ import annotations

from typing import Any

from homeserver.appservice.handler import AppserviceHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

MAX_FIELDS = 20
MAX_FIELD_LEN = 1024


class ThirdPartyServlets:
    def __init__(self, appservices: AppserviceHandler | None) -> None:
        self._appservices = appservices

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/thirdparty/protocols"), self.on_protocols)
        router.add("GET", client_paths("/thirdparty/protocol/{protocol}"), self.on_protocol)
        for kind in ("user", "location"):
            router.add("GET", client_paths(f"/thirdparty/{kind}/{{protocol}}"),
                       self._lookup(kind))
            router.add("GET", client_paths(f"/thirdparty/{kind}"), self._lookup(kind))

    async def on_protocols(self, req: ApiRequest) -> tuple[int, Any]:
        req.require_requester()
        if self._appservices is None:
            return 200, {}
        return 200, await self._appservices.protocols()

    async def on_protocol(self, req: ApiRequest, protocol: str) -> tuple[int, Any]:
        req.require_requester()
        found = await self._appservices.protocols(protocol) if self._appservices else {}
        if protocol not in found:
            raise MatrixError(404, "Unknown protocol", Codes.NOT_FOUND)
        return 200, found[protocol]

    def _lookup(self, kind: str) -> Any:
        async def handler(req: ApiRequest, protocol: str | None = None) -> tuple[int, Any]:
            req.require_requester()
            fields = _fields(req)
            if protocol is None:  # reverse lookup: by userid / alias
                key = "userid" if kind == "user" else "alias"
                if key not in fields:
                    raise MatrixError(400, f"Missing parameter: {key}", Codes.MISSING_PARAM)
            bridged = [p for s in self._appservices.services for p in s.protocols] \
                if self._appservices is not None else []
            if protocol is not None and protocol not in bridged:
                raise MatrixError(404, "Unknown protocol", Codes.NOT_FOUND)
            if not bridged or self._appservices is None:
                raise MatrixError(404, "No third-party networks are bridged here",
                                  Codes.NOT_FOUND)
            return 200, await self._appservices.lookup(kind, protocol, fields)
        return handler


def _fields(req: ApiRequest) -> dict[str, str]:
    """The query's fields (the access token aside), bounded, passed on to the service."""
    out: dict[str, str] = {}
    for raw_key, values in req.raw.args.items():
        try:
            key = raw_key.decode("utf-8")
            value = values[0].decode("utf-8") if values else ""
        except UnicodeDecodeError as e:
            raise MatrixError(400, "Query parameters must be UTF-8", Codes.INVALID_PARAM) from e
        if key in ("access_token", "user_id"):
            continue
        if len(out) >= MAX_FIELDS or len(key) > MAX_FIELD_LEN or len(value) > MAX_FIELD_LEN:
            raise MatrixError(400, "Too many or too long query parameters", Codes.INVALID_PARAM)
        out[key] = value
    return out
