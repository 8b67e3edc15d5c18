"""Federation REST endpoints served without X-Matrix (as the spec declares them):
``GET /_matrix/key/v2/server``, the notary ``/_matrix/key/v2/query`` (GET and POST)
and ``GET /_matrix/federation/v1/version``. Registered only with federation enabled."""

from __future__ import annotations

from typing import Any

import homeserver
from federation.local_keys import LocalServerKeys
from federation.notary import MAX_KEY_IDS_PER_SERVER, MAX_SERVERS_PER_QUERY, NotaryHandler
from federation.x_matrix import is_valid_server_name
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.params import MAX_INT64
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest

_TS = {"type": "integer", "minimum": 0, "maximum": MAX_INT64}
QUERY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["server_keys"],
    "properties": {
        "server_keys": {
            "type": "object",
            "maxProperties": MAX_SERVERS_PER_QUERY,
            "propertyNames": {"maxLength": 255},
            "additionalProperties": {
                "type": "object",
                "maxProperties": MAX_KEY_IDS_PER_SERVER,
                "propertyNames": {"maxLength": 255},
                "additionalProperties": {
                    "type": "object",
                    "properties": {"minimum_valid_until_ts": _TS},
                },
            },
        },
    },
}


class KeyServlets:
    def __init__(self, local: LocalServerKeys, notary: NotaryHandler) -> None:
        self._local = local
        self._notary = notary

    def register(self, router: Router) -> None:
        router.add("GET", "/_matrix/key/v2/server", self.on_server_keys, auth="none")
        router.add("GET", "/_matrix/key/v2/query/{server_name}", self.on_query_one,
                   auth="none")
        router.add("POST", "/_matrix/key/v2/query", self.on_query, auth="none",
                   body_schema=QUERY_SCHEMA)
        router.add("GET", "/_matrix/federation/v1/version", self.on_version, auth="none")

    async def on_server_keys(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, await self._local.key_response()

    async def on_query_one(self, req: ApiRequest, server_name: str) -> tuple[int, Any]:
        if not is_valid_server_name(server_name):
            raise MatrixError(400, "Invalid server name", Codes.INVALID_PARAM)
        min_valid = req.query_int("minimum_valid_until_ts")
        return 200, await self._notary.query({server_name: {}}, min_valid)

    async def on_query(self, req: ApiRequest) -> tuple[int, Any]:
        criteria: dict[str, dict[str, int | None]] = {}
        for server_name, keys in req.body["server_keys"].items():
            criteria[server_name] = {kid: c.get("minimum_valid_until_ts")
                                     for kid, c in keys.items()}
        return 200, await self._notary.query(criteria)

    async def on_version(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, {"server": {"name": "Parley", "version": homeserver.__version__}}
