"""Federation queries we answer (server side, all X-Matrix authenticated):

- ``GET /_matrix/federation/v1/query/profile``: a local user's profile (or one field);
- ``GET /_matrix/federation/v1/query/directory``: a local alias -> room id and servers;
- ``GET|POST /_matrix/federation/v1/publicRooms``: the rooms published to our directory;
- ``GET /_matrix/federation/v1/user/devices/{userId}``: a local user's devices with keys,
  the device-list ``stream_id`` and cross-signing master/self-signing keys;
- ``POST /_matrix/federation/v1/user/keys/query`` and ``/user/keys/claim``;
- ``GET /_matrix/federation/v1/hierarchy/{roomId}``: a space and its children that
  another server could peek or join (public, knock, world-readable), not paginated;
  the room's ``m.room.server_acl`` applies to the origin.

Only local users and aliases are answered (another server's are 400, as Synapse).
Device display names are not shared with other servers (Synapse's default,
``allow_device_name_lookup_over_federation: false``): they often name a person's
hardware. A blocked origin (homeserver/handlers/server_blocks.py) is refused with 403
``M_FORBIDDEN`` before anything is read.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.server_blocks import ServerBlocks
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_alias, check_room_id, split_user_id
from homeserver.rest.client.directory import PUBLIC_ROOMS_SCHEMA

JsonDict = dict[str, Any]
PREFIX = "/_matrix/federation/v1"
MAX_USERS = 1000
MAX_DEVICES = 1000
MAX_TOTAL_DEVICES = 10_000  # device ids in one query or claim, all users together
_ID = {"type": "string", "minLength": 1, "maxLength": 255}

KEYS_QUERY_SCHEMA: JsonDict = {
    "type": "object",
    "required": ["device_keys"],
    "properties": {"device_keys": {
        "type": "object", "maxProperties": MAX_USERS,
        "propertyNames": {"pattern": "^@", "maxLength": 255},
        "additionalProperties": {"type": "array", "maxItems": MAX_DEVICES, "items": _ID},
    }},
}
KEYS_CLAIM_SCHEMA: JsonDict = {
    "type": "object",
    "required": ["one_time_keys"],
    "properties": {"one_time_keys": {
        "type": "object", "maxProperties": MAX_USERS,
        "propertyNames": {"pattern": "^@", "maxLength": 255},
        "additionalProperties": {
            "type": "object", "maxProperties": MAX_DEVICES,
            "propertyNames": {"minLength": 1, "maxLength": 255},
            "additionalProperties": _ID,
        },
    }},
}


class FederationQueryServlets:
    def __init__(self, server_name: str, blocks: ServerBlocks, profile: Any, directory: Any,
                 e2e_keys: Any, device_lists: Any, hierarchy: Any = None,
                 creation: Any = None) -> None:
        self._server_name = server_name
        self._hierarchy = hierarchy
        self._creation = creation
        self._blocks = blocks
        self._profile = profile
        self._directory = directory
        self._keys = e2e_keys
        self._device_lists = device_lists

    def register(self, router: Router) -> None:
        fed = {"auth": "federation"}
        router.add("GET", f"{PREFIX}/query/profile", self.on_profile, **fed)
        router.add("GET", f"{PREFIX}/query/directory", self.on_directory, **fed)
        router.add("GET", f"{PREFIX}/publicRooms", self.on_get_public_rooms, **fed)
        router.add("POST", f"{PREFIX}/publicRooms", self.on_post_public_rooms,
                   body_schema=PUBLIC_ROOMS_SCHEMA, **fed)
        router.add("GET", f"{PREFIX}/user/devices/{{userId}}", self.on_user_devices, **fed)
        router.add("POST", f"{PREFIX}/user/keys/query", self.on_keys_query,
                   body_schema=KEYS_QUERY_SCHEMA, **fed)
        router.add("POST", f"{PREFIX}/user/keys/claim", self.on_keys_claim,
                   body_schema=KEYS_CLAIM_SCHEMA, **fed)
        if self._hierarchy is not None and self._creation is not None:
            router.add("GET", f"{PREFIX}/hierarchy/{{roomId}}", self.on_hierarchy, **fed)

    async def _origin(self, req: ApiRequest) -> str:
        origin = req.origin
        assert origin is not None  # the router authenticated it
        if await self._blocks.is_blocked(origin):
            raise MatrixError(403, "This server does not federate with yours", Codes.FORBIDDEN)
        return origin

    def _local_user(self, user_id: str | None) -> str:
        if not user_id:
            raise MatrixError(400, "Missing user_id", Codes.MISSING_PARAM)
        if split_user_id(user_id)[1] != self._server_name:
            raise MatrixError(400, "User is not hosted on this homeserver", Codes.INVALID_PARAM)
        return user_id

    # -- profile and directory --------------------------------------------------------

    async def on_profile(self, req: ApiRequest) -> tuple[int, Any]:
        await self._origin(req)
        user_id = self._local_user(req.query("user_id"))
        field = req.query("field")
        if field is not None:
            return 200, await self._profile.get_field(user_id, field)
        return 200, await self._profile.get_profile(user_id)

    async def on_directory(self, req: ApiRequest) -> tuple[int, Any]:
        await self._origin(req)
        alias = req.query("room_alias")
        if not alias:
            raise MatrixError(400, "Missing room_alias", Codes.MISSING_PARAM)
        if check_room_alias(alias)[1] != self._server_name:
            raise MatrixError(400, "Room alias is not hosted on this homeserver",
                              Codes.INVALID_PARAM)
        return 200, await self._directory.get_alias(alias)

    async def on_get_public_rooms(self, req: ApiRequest) -> tuple[int, Any]:
        await self._origin(req)
        return 200, await self._directory.public_rooms(
            limit=req.query_int("limit", maximum=2**31 - 1), since=req.query("since"),
            third_party_instance_id=req.query("third_party_instance_id"),
            include_all_networks=req.query_bool("include_all_networks"))

    async def on_post_public_rooms(self, req: ApiRequest) -> tuple[int, Any]:
        await self._origin(req)
        body = req.body
        search_filter = body.get("filter") or {}
        return 200, await self._directory.public_rooms(
            limit=body.get("limit"), since=body.get("since"),
            search=search_filter.get("generic_search_term"),
            room_types=search_filter.get("room_types"),
            third_party_instance_id=body.get("third_party_instance_id"),
            include_all_networks=body.get("include_all_networks") in (True, "true"))

    async def on_hierarchy(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        from federation.pdu_checks import server_allowed_by_acl

        origin = await self._origin(req)
        check_room_id(roomId)
        suggested_only = req.query_bool("suggested_only")
        acl = (await self._creation.current_state(roomId, [("m.room.server_acl", "")])
               ).get(("m.room.server_acl", ""))
        if acl is not None and not server_allowed_by_acl(origin, acl.content):
            raise MatrixError(403, "Server is banned from room", Codes.FORBIDDEN)
        return 200, await self._hierarchy.federation_hierarchy(roomId, suggested_only)

    # -- devices and keys -------------------------------------------------------------

    async def on_user_devices(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        await self._origin(req)
        user_id = self._local_user(userId)
        # Read the position first: a change after it is announced with a later one.
        stream_id = self._device_lists.current_position()
        answer = await self._keys.query_local_keys(None, {user_id: []})
        devices = [{"device_id": device_id, "keys": keys}
                   for device_id, keys in sorted(answer["device_keys"].get(user_id, {}).items())]
        out: JsonDict = {"user_id": user_id, "stream_id": stream_id, "devices": devices}
        for section, key in (("master_keys", "master_key"),
                             ("self_signing_keys", "self_signing_key")):
            if user_id in answer.get(section, {}):
                out[key] = answer[section][user_id]
        return 200, out

    @staticmethod
    def _check_total(users: dict[str, Any]) -> None:
        if sum(len(d) for d in users.values()) > MAX_TOTAL_DEVICES:
            raise MatrixError(400, f"At most {MAX_TOTAL_DEVICES} devices per request",
                              Codes.INVALID_PARAM)

    async def on_keys_query(self, req: ApiRequest) -> tuple[int, Any]:
        await self._origin(req)
        self._check_total(req.body["device_keys"])
        local = {u: list(dict.fromkeys(d)) for u, d in req.body["device_keys"].items()
                 if split_user_id(u)[1] == self._server_name}
        answer = await self._keys.query_local_keys(None, local)
        return 200, {"device_keys": answer["device_keys"],
                     "master_keys": answer.get("master_keys", {}),
                     "self_signing_keys": answer.get("self_signing_keys", {})}

    async def on_keys_claim(self, req: ApiRequest) -> tuple[int, Any]:
        await self._origin(req)
        self._check_total(req.body["one_time_keys"])
        wanted = [(u, d, alg) for u, devices in req.body["one_time_keys"].items()
                  if split_user_id(u)[1] == self._server_name for d, alg in devices.items()]
        return 200, {"one_time_keys": await self._keys.claim_local_keys(wanted)}


def register_queries(config: Any, clock: Any, db: Any, events: Any, router: Router,
                     client: Any, deps: Any) -> Any:
    """Serve the query and media endpoints and give the handlers their federation hooks
    (remote keys, profiles, aliases, room lists and media). Returns the RemoteQueries."""
    from federation.media_servlets import FederationMediaServlets, RemoteMediaFetcher
    from federation.remote_queries import RemoteQueries, install_remote_queries
    from homeserver.media.remote import RemoteMediaCache
    from storage.stores.remote_media import RemoteMediaStore

    if deps is None or deps.stores is None:
        return None
    blocks = ServerBlocks(config.server_name, clock, deps.stores.blocked_servers, events,
                          config.federation_blocked_servers)
    if deps.accounts is not None and deps.rooms is not None and deps.e2ee is not None:
        FederationQueryServlets(config.server_name, blocks, deps.accounts.profile,
                                deps.rooms.directory, deps.e2ee.e2e_keys,
                                deps.e2ee.device_lists, deps.rooms.hierarchy,
                                deps.rooms.event_creation).register(router)
    queries = RemoteQueries(config.server_name, client, blocks, clock)
    install_remote_queries(queries, deps)
    if deps.media is not None:
        fetcher = RemoteMediaFetcher(client, blocks, config.federation.request_timeout)
        deps.media.remote = RemoteMediaCache(
            deps.media, RemoteMediaStore(db), clock, config.media.remote_cache_max_bytes,
            fetcher.download, fetcher.thumbnail)
        FederationMediaServlets(deps.media, blocks).register(router)
    return queries
