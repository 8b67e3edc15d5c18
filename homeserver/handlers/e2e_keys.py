"""End-to-end encryption keys: /keys/upload, /keys/query, /keys/claim.

The server only ever holds public keys, and only keys their device really signed:
device keys must carry a valid self-signature by the device's own Ed25519 key, and
every signed one-time or fallback key a valid signature by that same key. A forged
upload could otherwise let anyone with a stolen access token swap a device's identity
for one the attacker controls, or plant one-time keys others would encrypt to.

Users of other servers are asked through ``remote_query`` / ``remote_claim``, hooks
federation sets (federation/remote_queries.py); without federation they are reported
under ``failures``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from signedjson.key import decode_verify_key_bytes
from signedjson.types import VerifyKey

from homeserver.clock import Clock
from homeserver.events.hashing import decode_base64
from homeserver.events.signing import SignatureError, verify_signed_json
from homeserver.handlers.device_lists import DEFAULT_OTK_ALGORITHM, DeviceListHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import split_user_id
from storage.stores.e2e_keys import E2eKeyStore

JsonDict = dict[str, Any]
# A /keys/query extension: (requesting user, {user: [device ids]} of local users, the
# response being built) -> adds e.g. master_keys / self_signing_keys / user_signing_keys
# and signatures on device keys. Used by cross-signing.
QueryProvider = Callable[[str, dict[str, list[str]], JsonDict], Awaitable[None]]
# Federation hooks: ({server: {user: [device ids]}} or {server: {user: {device: algorithm}}},
# timeout in seconds) -> (the merged answers, {server: failure}).
RemoteQuery = Callable[[dict[str, dict[str, Any]], float], Awaitable[tuple[JsonDict, JsonDict]]]
DEFAULT_REMOTE_TIMEOUT_MS = 10_000
MAX_REMOTE_TIMEOUT_MS = 60_000

MAX_ID_LENGTH = 255
# Algorithm names: the spec's grammar is lower-case letters, digits, '.', '_' and '-'.
_ALGORITHM = re.compile(r"^[a-z0-9._\-]{1,64}$")
FEDERATION_FAILURE = {"status": 503, "message": "Federation is not enabled on this server"}


def _invalid(msg: str) -> MatrixError:
    return MatrixError(400, msg, Codes.INVALID_PARAM)


def _bad_json(msg: str) -> MatrixError:
    return MatrixError(400, msg, Codes.BAD_JSON)


def _check_str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise _bad_json(f"{what} must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    return value


def _split_key_name(name: str, what: str) -> tuple[str, str]:
    """``<algorithm>:<key id>``, each part non-empty."""
    algorithm, sep, key_id = name.partition(":")
    if not sep or not _ALGORITHM.match(algorithm) or not key_id or len(name) > MAX_ID_LENGTH \
            or ":" in key_id:
        raise _bad_json(f"{what} must be named <algorithm>:<key id>, got {name[:80]!r}")
    return algorithm, key_id


def _ed25519_key(device_keys: JsonDict, device_id: str) -> VerifyKey:
    """The device's own Ed25519 public key, from its (already shape-checked) keys."""
    raw = device_keys["keys"].get(f"ed25519:{device_id}")
    if not isinstance(raw, str):
        raise _invalid(f"device_keys.keys must contain ed25519:{device_id}")
    try:
        key_bytes = decode_base64(raw)
    except ValueError:
        raise _invalid("The device's ed25519 key is not valid Base64") from None
    if len(key_bytes) != 32:
        raise _invalid("The device's ed25519 key must be 32 bytes")
    try:
        return decode_verify_key_bytes(f"ed25519:{device_id}", key_bytes)
    except Exception:  # PyNaCl rejects some byte strings outright
        raise _invalid("The device's ed25519 key is not a valid key") from None


def _verify(obj: JsonDict, user_id: str, key: VerifyKey, what: str) -> None:
    try:
        verify_signed_json(obj, user_id, key)
    except SignatureError:
        raise _invalid(f"Invalid signature on {what}") from None


def check_device_keys(device_keys: Any, user_id: str, device_id: str) -> VerifyKey:
    """Shape, ownership and self-signature of a DeviceKeys object; its Ed25519 key."""
    if not isinstance(device_keys, dict):
        raise _bad_json("device_keys must be an object")
    for field in ("user_id", "device_id", "algorithms", "keys", "signatures"):
        if field not in device_keys:
            # M_BAD_JSON, as Synapse's request model answers (and SyTest expects): the
            # body is present but is not a DeviceKeys object.
            raise _bad_json(f"device_keys.{field} is required")
    if device_keys["user_id"] != user_id:
        raise _invalid("device_keys.user_id must be your own user ID")
    if device_keys["device_id"] != device_id:
        raise _invalid("device_keys.device_id must be the device of this access token")
    algorithms = device_keys["algorithms"]
    if not isinstance(algorithms, list) or len(algorithms) > 100 \
            or not all(isinstance(a, str) and 0 < len(a) <= MAX_ID_LENGTH for a in algorithms):
        raise _bad_json("device_keys.algorithms must be a list of strings")
    keys = device_keys["keys"]
    if not isinstance(keys, dict) or not keys or len(keys) > 100:
        raise _bad_json("device_keys.keys must be a non-empty object")
    for name, value in keys.items():
        _split_key_name(name, "device_keys.keys entries")
        if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
            raise _bad_json("device_keys.keys values must be non-empty strings")
    signatures = device_keys["signatures"]
    if not isinstance(signatures, dict) or not all(isinstance(v, dict) for v in signatures.values()):
        raise _bad_json("device_keys.signatures must be an object of objects")
    if "unsigned" in device_keys and not isinstance(device_keys["unsigned"], dict):
        raise _bad_json("device_keys.unsigned must be an object")
    key = _ed25519_key(device_keys, device_id)
    _verify(device_keys, user_id, key, "device_keys")
    return key


def check_key_map(keys: Any, what: str, user_id: str, key: VerifyKey | None
                  ) -> list[tuple[str, str, Any]]:
    """One-time or fallback keys: ``{"<alg>:<id>": key}`` -> [(alg, id, key)]. A key
    object must be signed by the device (a bare string is only accepted for an
    algorithm that is not ``signed_*``, the legacy unsigned form)."""
    if not isinstance(keys, dict):
        raise _bad_json(f"{what} must be an object")
    out: list[tuple[str, str, Any]] = []
    for name, value in keys.items():
        algorithm, key_id = _split_key_name(name, f"{what} entries")
        if isinstance(value, str):
            if algorithm.startswith("signed_") or not value or len(value) > MAX_ID_LENGTH:
                raise _bad_json(f"{what}.{name} must be a signed key object")
        elif isinstance(value, dict):
            if not isinstance(value.get("key"), str) or not value["key"] \
                    or len(value["key"]) > MAX_ID_LENGTH:
                raise _bad_json(f"{what}.{name}.key must be a non-empty string")
            if "fallback" in value and not isinstance(value["fallback"], bool):
                raise _bad_json(f"{what}.{name}.fallback must be a boolean")
            if not isinstance(value.get("signatures"), dict):
                raise MatrixError(400, f"{what}.{name}.signatures is required",
                                  Codes.MISSING_PARAM)
            if key is None:
                raise _invalid("Upload device keys before signed one-time or fallback keys")
            _verify(value, user_id, key, f"{what}.{name}")
        else:
            raise _bad_json(f"{what}.{name} must be a key object")
        out.append((algorithm, key_id, value))
    return out


class E2eKeysHandler:
    def __init__(self, server_name: str, clock: Clock, store: E2eKeyStore,
                 device_lists: DeviceListHandler) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._device_lists = device_lists
        # Extensions to /keys/query (cross-signing); each may add sections in place.
        self.query_providers: list[QueryProvider] = []
        # Set by federation (federation/remote_queries.py) when it is enabled.
        self.remote_query: RemoteQuery | None = None
        self.remote_claim: RemoteQuery | None = None
        # Told the (user, device) pairs whose one-time or fallback keys were uploaded or
        # claimed (application services: homeserver/appservice/encryption.py).
        self.on_key_counts_changed: list[Callable[[list[tuple[str, str]]], None]] = []

    def _is_mine(self, user_id: str) -> bool:
        return split_user_id(user_id)[1] == self._server_name

    # Upload

    async def upload_keys(self, user_id: str, device_id: str | None, body: JsonDict) -> JsonDict:
        """Everything is checked before anything is stored."""
        if device_id is None:
            raise _invalid("This access token has no device")
        new_device_keys = None
        stored = await self._store.get_device_keys(user_id, device_id)
        verify_key: VerifyKey | None = None
        if "device_keys" in body:
            new_device_keys = body["device_keys"]
            verify_key = check_device_keys(new_device_keys, user_id, device_id)
            if stored is not None and stored.get("keys") != new_device_keys["keys"]:
                # The device's identity keys cannot change (Synapse is moving to this
                # too): a new identity is a new device.
                raise _invalid("This device already has different identity keys")
            if stored == new_device_keys:
                new_device_keys = None  # an identical re-upload changes nothing
        elif stored is not None:
            verify_key = _ed25519_key(stored, device_id)
        one_time = check_key_map(body.get("one_time_keys", {}), "one_time_keys", user_id,
                                 verify_key)
        fallback = check_key_map(body.get("fallback_keys", {}), "fallback_keys", user_id,
                                 verify_key)
        algorithms = [alg for alg, _, _ in fallback]
        if len(set(algorithms)) != len(algorithms):
            raise _invalid("At most one fallback key per algorithm may be uploaded")

        if one_time:  # first: a conflict here must leave nothing stored
            conflicts = await self._store.add_one_time_keys(user_id, device_id,
                                                            self._clock.time_msec(), one_time)
            if conflicts:
                alg, kid = conflicts[0]
                raise MatrixError(400, f"One time key {alg}:{kid} already exists with"
                                       " different content", Codes.INVALID_PARAM)
        if new_device_keys is not None:
            await self._store.set_device_keys(user_id, device_id, new_device_keys,
                                              self._clock.time_msec())
        for alg, kid, value in fallback:
            await self._store.set_fallback_key(user_id, device_id, alg, kid, value)
        if new_device_keys is not None:
            await self._device_lists.notify_device_change(user_id, [device_id])
        if one_time or fallback:
            for listener in self.on_key_counts_changed:
                listener([(user_id, device_id)])
        counts = await self._store.count_one_time_keys(user_id, device_id)
        counts.setdefault(DEFAULT_OTK_ALGORITHM, 0)
        return {"one_time_key_counts": counts}

    # Query

    @staticmethod
    def remote_timeout(body: JsonDict) -> float:
        """The per-server timeout of a query or claim, in seconds (``timeout`` in ms,
        default 10 s, at most 60 s)."""
        timeout = body.get("timeout")
        if not isinstance(timeout, int) or isinstance(timeout, bool):
            timeout = DEFAULT_REMOTE_TIMEOUT_MS
        return max(1, min(timeout, MAX_REMOTE_TIMEOUT_MS)) / 1000

    async def query_keys(self, requester: str, body: JsonDict) -> JsonDict:
        wanted = body["device_keys"]
        failures: JsonDict = {}
        local: dict[str, list[str]] = {}
        remote: dict[str, dict[str, Any]] = {}
        for user_id, device_ids in wanted.items():
            _, server = split_user_id(user_id)
            if server != self._server_name:
                remote.setdefault(server, {})[user_id] = list(dict.fromkeys(device_ids))
                continue
            local[user_id] = list(dict.fromkeys(device_ids))
        response = await self.query_local_keys(requester, local)
        if remote and self.remote_query is not None:
            answers, failures = await self.remote_query(remote, self.remote_timeout(body))
            for section in ("device_keys", "master_keys", "self_signing_keys"):
                response[section].update(answers.get(section, {}))
        else:
            failures = {server: dict(FEDERATION_FAILURE) for server in remote}
        response["failures"] = failures
        return response

    async def query_local_keys(self, requester: str | None, local: dict[str, list[str]]
                               ) -> JsonDict:
        """Keys of local users (``{user: [device ids]}``, none: every device). With no
        ``requester`` (a query from another server), no user-signing keys and only the
        owners' signatures are included."""
        queries: list[tuple[str, str | None]] = []
        for user_id, device_ids in local.items():
            queries.extend([(user_id, d) for d in device_ids] or [(user_id, None)])
        device_keys: dict[str, JsonDict] = {u: {} for u in local}
        for rec in await self._store.query_device_keys(queries):
            # Only the server's own unsigned data: a client's is not echoed to others.
            # Device names stay on this server (Synapse's default for federation).
            info = dict(rec.keys)
            info["unsigned"] = ({"device_display_name": rec.display_name}
                                if rec.display_name is not None and requester is not None
                                else {})
            device_keys[rec.user_id][rec.device_id] = info
        response: JsonDict = {"device_keys": device_keys, "failures": {},
                              "master_keys": {}, "self_signing_keys": {},
                              "user_signing_keys": {}}
        for provider in self.query_providers:
            await provider(requester or "", local, response)
        return response

    # Claim

    async def claim_keys(self, body: JsonDict) -> JsonDict:
        failures: JsonDict = {}
        wanted: list[tuple[str, str, str]] = []
        remote: dict[str, dict[str, Any]] = {}
        for user_id, devices in body["one_time_keys"].items():
            _, server = split_user_id(user_id)
            if server != self._server_name:
                remote.setdefault(server, {})[user_id] = dict(devices)
                continue
            for device_id, algorithm in devices.items():
                wanted.append((user_id, device_id, algorithm))
        result = await self.claim_local_keys(wanted)
        if remote and self.remote_claim is not None:
            answers, failures = await self.remote_claim(remote, self.remote_timeout(body))
            result.update(answers.get("one_time_keys", {}))
        else:
            failures = {server: dict(FEDERATION_FAILURE) for server in remote}
        return {"one_time_keys": result, "failures": failures}

    async def claim_local_keys(self, wanted: list[tuple[str, str, str]]
                               ) -> dict[str, dict[str, JsonDict]]:
        """Claim one key per (local user, device, algorithm)."""
        result: dict[str, dict[str, JsonDict]] = {}
        for key in await self._store.claim_keys(wanted):
            result.setdefault(key.user_id, {}).setdefault(key.device_id, {})[
                f"{key.algorithm}:{key.key_id}"] = key.key
        if result:
            claimed = [(u, d) for u, by_device in result.items() for d in by_device]
            for listener in self.on_key_counts_changed:
                listener(claimed)
        return result
