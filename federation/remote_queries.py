"""Client-side transparency: what local clients ask about other servers' users, aliases
and rooms, fetched over federation (the hooks ``E2eKeysHandler.remote_query`` /
``remote_claim``, ``ProfileHandler.remote_profile``, ``DirectoryHandler.remote_alias`` /
``remote_public_rooms``, ``MembershipHandler.remote_alias`` and
``HierarchyHandler.remote_hierarchy``, set by :func:`install_remote_queries`).

Only space hierarchies are cached (a minute, as the spec suggests); every other lookup
asks the remote server again (device lists in particular must be fresh: a stale list
is a device a message is not encrypted to).
Key queries and claims ask every server at once, each with the client's ``timeout``
(default 10 s); a server that is blocked, not allowed, unreachable, slow or answers
with an error is reported under ``failures`` as ``{"status", "message"}`` (Synapse's
shape). Answers are untrusted input: only the users, devices and keys that were asked
for, of the server that was asked, are kept, device keys must carry their device's
valid self-signature, and every answer is size-bounded.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from twisted.internet import defer

from federation.client import (
    FederationClient,
    FederationDenied,
    FederationError,
    FederationHttpError,
)
from federation.x_matrix import is_valid_server_name
from homeserver.handlers.e2e_keys import check_device_keys
from homeserver.handlers.server_blocks import ServerBlocks
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import split_user_id

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
PREFIX = "/_matrix/federation/v1"
QUERY_TIMEOUT_S = 15.0
MAX_PROFILE_ANSWER = 96 * 1024  # a profile is at most 64 KiB
MAX_SMALL_ANSWER = 64 * 1024
MAX_KEYS_ANSWER = 16 * 1024 * 1024
MAX_ROOMS_ANSWER = 4 * 1024 * 1024
MAX_SERVERS = 50
MAX_ROOMS = 500
MAX_DEVICES = 1000  # per user, as many as a client may ask for
HIERARCHY_CACHE_MS = 60_000
MAX_CACHED_HIERARCHIES = 1000
MAX_CHILDREN = 1000
MAX_TOKEN = 1024
_CROSS_SIGNING = ("master_keys", "self_signing_keys")


def _failure(e: Exception) -> JsonDict:
    """The ``failures`` entry of one server."""
    if isinstance(e, FederationHttpError):
        return {"status": e.code, "message": "The server answered with an error"}
    if isinstance(e, (FederationDenied, _Blocked)):
        return {"status": 403, "message": "Federation with this server is not allowed"}
    return {"status": 503, "message": "The server could not be reached"}


class _Blocked(Exception):
    pass


def _unreachable(what: str, e: Exception) -> MatrixError:
    """A failed single lookup as the client sees it: the remote's 400/403/404 as such,
    anything else 502."""
    if isinstance(e, FederationHttpError) and e.code in (400, 403, 404):
        code = {400: Codes.INVALID_PARAM, 403: Codes.FORBIDDEN, 404: Codes.NOT_FOUND}[e.code]
        return MatrixError(e.code, f"The remote server refused the {what} request", code)
    if isinstance(e, (FederationDenied, _Blocked)):
        return MatrixError(403, "Federation with this server is not allowed", Codes.FORBIDDEN)
    return MatrixError(502, f"Failed to fetch the {what} from the remote server", Codes.UNKNOWN)


def _is_str(value: Any, limit: int = 255) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit


class RemoteQueries:
    def __init__(self, server_name: str, client: FederationClient, blocks: ServerBlocks,
                 clock: Any = None) -> None:
        self._server_name = server_name
        self._client = client
        self._blocks = blocks
        self._clock = clock
        self._hierarchy_cache: dict[tuple[str, bool], tuple[int, JsonDict]] = {}

    async def _check(self, server: str) -> None:
        if await self._blocks.is_blocked(server):
            raise _Blocked(server)

    async def _get(self, server: str, path: str, args: JsonDict | None, max_size: int,
                   timeout: float = QUERY_TIMEOUT_S) -> Any:
        await self._check(server)
        return await self._client.get_json(server, path, args, timeout=timeout,
                                           max_size=max_size)

    # -- profile ----------------------------------------------------------------------

    async def query_profile(self, user_id: str, field: str | None) -> JsonDict:
        """``/query/profile`` of a user of another server: the fields it answered with
        string-valued ``displayname``/``avatar_url`` (others pass as JSON values)."""
        _, server = split_user_id(user_id)
        if not is_valid_server_name(server):
            raise MatrixError(400, "Invalid user ID", Codes.INVALID_PARAM)
        args = {"user_id": user_id, **({"field": field} if field is not None else {})}
        try:
            answer = await self._get(server, f"{PREFIX}/query/profile", args,
                                     MAX_PROFILE_ANSWER)
        except (FederationError, _Blocked) as e:
            raise _unreachable("profile", e) from None
        if not isinstance(answer, dict):
            raise MatrixError(502, "Invalid profile from the remote server", Codes.UNKNOWN)
        profile = {k: v for k, v in answer.items() if v is not None and (
            k not in ("displayname", "avatar_url") or isinstance(v, str))}
        if field is not None:
            profile = {field: profile[field]} if field in profile else {}
        return profile

    # -- aliases and room lists -------------------------------------------------------

    async def query_alias(self, alias: str) -> JsonDict | None:
        """``/query/directory``: ``{"room_id", "servers"}`` or None when the alias'
        server does not know it."""
        server = alias.partition(":")[2]
        if not is_valid_server_name(server):
            raise MatrixError(400, "Room alias invalid", Codes.INVALID_PARAM)
        try:
            answer = await self._get(server, f"{PREFIX}/query/directory",
                                     {"room_alias": alias}, MAX_SMALL_ANSWER)
        except FederationHttpError as e:
            if e.code == 404:
                return None
            raise _unreachable("room alias", e) from None
        except (FederationError, _Blocked) as e:
            raise _unreachable("room alias", e) from None
        room_id = answer.get("room_id") if isinstance(answer, dict) else None
        servers = answer.get("servers") if isinstance(answer, dict) else None
        if not _is_str(room_id) or not room_id.startswith("!") or not isinstance(servers, list):
            raise MatrixError(502, "Invalid answer from the remote server", Codes.UNKNOWN)
        kept = [s for s in dict.fromkeys(servers) if isinstance(s, str)
                and is_valid_server_name(s)][:MAX_SERVERS]
        if server not in kept:
            kept.insert(0, server)
        return {"room_id": room_id, "servers": kept[:MAX_SERVERS]}

    async def public_rooms(self, server: str, params: JsonDict) -> JsonDict:
        """Another server's ``/publicRooms`` (GET, or POST when filtering)."""
        limit, since = params.get("limit"), params.get("since")
        filtered = bool(params.get("search") or params.get("room_types")
                        or params.get("third_party_instance_id")
                        or params.get("include_all_networks"))
        path = f"{PREFIX}/publicRooms"
        try:
            await self._check(server)
            if filtered:
                body: JsonDict = {"filter": {}}
                if params.get("search"):
                    body["filter"]["generic_search_term"] = params["search"]
                if params.get("room_types"):
                    body["filter"]["room_types"] = params["room_types"]
                for key in ("limit", "since", "third_party_instance_id"):
                    if params.get(key) is not None:
                        body[key] = params[key]
                if params.get("include_all_networks"):
                    body["include_all_networks"] = True
                answer = await self._client.post_json(server, path, body,
                                                      timeout=QUERY_TIMEOUT_S,
                                                      max_size=MAX_ROOMS_ANSWER)
            else:
                args: JsonDict = {}
                if limit:
                    args["limit"] = str(limit)
                if since:
                    args["since"] = since
                answer = await self._client.get_json(server, path, args or None,
                                                     timeout=QUERY_TIMEOUT_S,
                                                     max_size=MAX_ROOMS_ANSWER)
        except (FederationError, _Blocked) as e:
            raise _unreachable("room list", e) from None
        return _clean_room_list(answer)

    # -- space hierarchy --------------------------------------------------------------

    async def query_hierarchy(self, room_id: str, via: list[str], suggested_only: bool
                              ) -> JsonDict | None:
        """Another server's ``/hierarchy/{roomId}``, asking the ``via`` servers in turn
        (at most three); answers are kept for a minute (the spec asks for caching, and
        paginating a hierarchy redoes its walk). None if no server answered."""
        key = (room_id, suggested_only)
        now = self._clock.time_msec() if self._clock is not None else 0
        cached = self._hierarchy_cache.get(key)
        if cached is not None and now - cached[0] < HIERARCHY_CACHE_MS:
            return cached[1]
        servers = [s for s in dict.fromkeys(via) if s != self._server_name
                   and is_valid_server_name(s)][:3]
        for server in servers:
            try:
                answer = await self._get(
                    server, f"{PREFIX}/hierarchy/{quote(room_id, safe='')}",
                    {"suggested_only": "true" if suggested_only else "false"},
                    MAX_ROOMS_ANSWER)
            except (FederationError, _Blocked):
                continue
            cleaned = _clean_hierarchy(room_id, answer)
            if cleaned is not None:
                if len(self._hierarchy_cache) >= MAX_CACHED_HIERARCHIES:
                    self._hierarchy_cache.clear()
                self._hierarchy_cache[key] = (now, cleaned)
                return cleaned
        return None

    # -- keys -------------------------------------------------------------------------

    async def _each_server(self, wanted: dict[str, dict[str, Any]], timeout: float,
                           one: Any) -> tuple[list[tuple[str, Any]], JsonDict]:
        """Run ``one(server, users, timeout)`` for every server at once; (answers,
        failures)."""
        servers = [s for s in wanted if s != self._server_name]
        failures: JsonDict = {}

        async def run(server: str) -> tuple[str, Any]:
            try:
                await self._check(server)
                return server, await one(server, wanted[server], timeout)
            except (FederationError, _Blocked) as e:
                failures[server] = _failure(e)
            except Exception:  # noqa: BLE001 (one server's garbage must not fail the rest)
                logger.exception("Key request to another server failed")
                failures[server] = {"status": 503, "message": "Invalid answer"}
            return server, None

        results = await defer.gatherResults(
            [defer.ensureDeferred(run(s)) for s in servers], consumeErrors=True)
        return [(s, a) for s, a in results if a is not None], failures

    async def query_keys(self, wanted: dict[str, dict[str, Any]], timeout: float
                         ) -> tuple[JsonDict, JsonDict]:
        """``/user/keys/query`` on every server of ``wanted`` ({server: {user:
        [devices]}}): the merged device_keys / master_keys / self_signing_keys."""

        async def one(server: str, users: dict[str, list[str]], t: float) -> Any:
            return await self._client.post_json(server, f"{PREFIX}/user/keys/query",
                                                 {"device_keys": users}, timeout=t,
                                                 max_size=MAX_KEYS_ANSWER)

        answers, failures = await self._each_server(wanted, timeout, one)
        merged: JsonDict = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
        for server, answer in answers:
            _merge_key_answer(merged, wanted[server], answer)
        return merged, failures

    async def claim_keys(self, wanted: dict[str, dict[str, Any]], timeout: float
                         ) -> tuple[JsonDict, JsonDict]:
        """``/user/keys/claim`` on every server of ``wanted`` ({server: {user: {device:
        algorithm}}})."""

        async def one(server: str, users: dict[str, dict[str, str]], t: float) -> Any:
            return await self._client.post_json(server, f"{PREFIX}/user/keys/claim",
                                                {"one_time_keys": users}, timeout=t,
                                                max_size=MAX_KEYS_ANSWER)

        answers, failures = await self._each_server(wanted, timeout, one)
        claimed: JsonDict = {}
        for server, answer in answers:
            keys = answer.get("one_time_keys") if isinstance(answer, dict) else None
            if not isinstance(keys, dict):
                failures[server] = {"status": 503, "message": "Invalid answer"}
                continue
            for user_id, devices in wanted[server].items():
                got = keys.get(user_id)
                if not isinstance(got, dict):
                    continue
                for device_id, algorithm in devices.items():
                    dev = got.get(device_id)
                    if not isinstance(dev, dict):
                        continue
                    kept = {name: key for name, key in list(dev.items())[:1]
                            if isinstance(name, str) and name.startswith(f"{algorithm}:")
                            and isinstance(key, (dict, str))}
                    if kept:
                        claimed.setdefault(user_id, {})[device_id] = kept
        return {"one_time_keys": claimed}, failures


def _merge_key_answer(merged: JsonDict, asked: dict[str, list[str]], answer: Any) -> None:
    """Keep, of one server's ``/user/keys/query`` answer, the asked users' devices whose
    keys name that user and device and carry a valid self-signature, and the asked
    users' cross-signing keys that name them."""
    if not isinstance(answer, dict):
        raise FederationError("invalid answer")
    devices = answer.get("device_keys")
    devices = devices if isinstance(devices, dict) else {}
    for user_id, device_ids in asked.items():
        got = devices.get(user_id)
        out: JsonDict = {}
        for device_id, keys in list(got.items() if isinstance(got, dict) else [])[:MAX_DEVICES]:
            if (device_ids and device_id not in device_ids) or not _is_str(device_id):
                continue
            try:
                check_device_keys(keys, user_id, device_id)
            except MatrixError:
                logger.info("Dropped remote device keys that do not verify")
                continue
            out[device_id] = keys
        merged["device_keys"][user_id] = out
        for section in _CROSS_SIGNING:
            key = answer.get(section, {}).get(user_id) if isinstance(
                answer.get(section), dict) else None
            if isinstance(key, dict) and key.get("user_id") == user_id \
                    and isinstance(key.get("keys"), dict) and isinstance(key.get("usage"), list):
                merged[section][user_id] = key


def _clean_room_list(answer: Any) -> JsonDict:
    """A remote ``/publicRooms`` answer reduced to well-formed chunks."""
    if not isinstance(answer, dict) or not isinstance(answer.get("chunk"), list):
        raise MatrixError(502, "Invalid room list from the remote server", Codes.UNKNOWN)
    chunk = []
    for room in answer["chunk"][:MAX_ROOMS]:
        if not isinstance(room, dict) or not _is_str(room.get("room_id")) \
                or not isinstance(room.get("num_joined_members"), int) \
                or not isinstance(room.get("world_readable"), bool) \
                or not isinstance(room.get("guest_can_join"), bool):
            continue
        entry = {k: room[k] for k in ("room_id", "num_joined_members", "world_readable",
                                      "guest_can_join")}
        for key in ("name", "topic", "canonical_alias", "avatar_url", "join_rule",
                    "room_type"):
            if isinstance(room.get(key), str):
                entry[key] = room[key]
        chunk.append(entry)
    out: JsonDict = {"chunk": chunk}
    for key in ("next_batch", "prev_batch"):
        if _is_str(answer.get(key), MAX_TOKEN):
            out[key] = answer[key]
    if isinstance(answer.get("total_room_count_estimate"), int):
        out["total_room_count_estimate"] = answer["total_room_count_estimate"]
    return out


def _summary_ok(room: Any) -> bool:
    return isinstance(room, dict) and _is_str(room.get("room_id")) \
        and room["room_id"].startswith("!") \
        and isinstance(room.get("num_joined_members"), int) \
        and isinstance(room.get("world_readable"), bool) \
        and isinstance(room.get("guest_can_join"), bool)


def _clean_hierarchy(room_id: str, answer: Any) -> JsonDict | None:
    """A remote ``/hierarchy`` answer about ``room_id`` with well-formed parts only."""
    if not isinstance(answer, dict) or not _summary_ok(answer.get("room")) \
            or answer["room"]["room_id"] != room_id:
        return None
    room = dict(answer["room"])
    state = room.get("children_state")
    room["children_state"] = [
        ev for ev in (state if isinstance(state, list) else [])[:MAX_CHILDREN]
        if isinstance(ev, dict) and ev.get("type") == "m.space.child"
        and _is_str(ev.get("state_key")) and isinstance(ev.get("content"), dict)]
    children = answer.get("children")
    return {"room": room,
            "children": [c for c in (children if isinstance(children, list) else [])
                         [:MAX_CHILDREN] if _summary_ok(c)]}


def install_remote_queries(queries: RemoteQueries, deps: Any) -> None:
    """Set the handlers' federation hooks (handlers never import federation/)."""
    if deps.e2ee is not None:
        deps.e2ee.e2e_keys.remote_query = queries.query_keys
        deps.e2ee.e2e_keys.remote_claim = queries.claim_keys
    if deps.accounts is not None:
        deps.accounts.profile.remote_profile = queries.query_profile
    if deps.rooms is not None:
        deps.rooms.directory.remote_alias = queries.query_alias
        deps.rooms.directory.remote_public_rooms = queries.public_rooms
        deps.rooms.membership.remote_alias = queries.query_alias
        deps.rooms.hierarchy.remote_hierarchy = queries.query_hierarchy
