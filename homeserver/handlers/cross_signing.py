"""Cross-signing: POST /keys/device_signing/upload and POST /keys/signatures/upload,
plus what /keys/query shows of them.

Every signature the server stores or serves is verified here first (Ed25519 over the
canonical JSON of the object without ``signatures`` and ``unsigned``): a client must be
able to trust that a signature shown by /keys/query was made by the key it names,
even though it verifies again itself.

Choices compared with Synapse:
- as the spec (v1.11) and Synapse: the first upload (no master key yet) and a re-upload
  of exactly the stored keys need no UIA; replacing any key needs ``m.login.password``;
- Synapse stores a master key's inline ``signatures`` unverified; we keep only those
  that verify (the key's own and the user's devices'), dropping the rest silently;
  the self-signing and user-signing keys keep only their verified master signature;
- replacing a key deletes the stored signatures made by it and on it;
- signatures on another user's master key (by our user-signing key) are shown only to
  the signer, and signatures on devices only when made by the device's owner, as Synapse;
- device-list changes as Synapse: new master/self-signing keys and self-signatures are
  announced to everyone sharing a room; a new user-signing key only to its owner, and a
  signature on another user's master key only to the signer (``on_private_change``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from homeserver.clock import Clock
from homeserver.events.canonical_json import encode_canonical_json
from homeserver.events.hashing import decode_base64
from homeserver.http.errors import Codes, MatrixError
from storage.stores.cross_signing import CrossSigningStore, StoredSignature
from storage.stores.devices import DeviceStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
MASTER, SELF_SIGNING, USER_SIGNING = "master", "self_signing", "user_signing"
# Not (yet) in homeserver.http.errors.Codes.
INVALID_SIGNATURE = "M_INVALID_SIGNATURE"
BODY_FIELDS = {"master_key": MASTER, "self_signing_key": SELF_SIGNING,
               "user_signing_key": USER_SIGNING}


def _unsigned_part(obj: Mapping[str, Any]) -> JsonDict:
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def _signature(obj: Mapping[str, Any], signer: str, key_id: str) -> str | None:
    sigs = obj.get("signatures")
    by_signer = sigs.get(signer) if isinstance(sigs, dict) else None
    sig = by_signer.get(key_id) if isinstance(by_signer, dict) else None
    return sig if isinstance(sig, str) else None


def verify_signature(obj: Mapping[str, Any], signer: str, key_id: str, public_key: str) -> bool:
    """Whether ``obj`` carries a valid signature by ``signer``'s ``key_id``."""
    sig = _signature(obj, signer, key_id)
    if sig is None:
        return False
    try:
        VerifyKey(decode_base64(public_key)).verify(encode_canonical_json(_unsigned_part(obj)),
                                                    decode_base64(sig))
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def parse_cross_signing_key(key: Any, user_id: str, usage: str) -> tuple[str, str]:
    """Check a CrossSigningKey object; returns (key id ``ed25519:<pub>``, public key)."""
    name = f"{usage} key"
    if not isinstance(key, dict) or key.get("user_id") != user_id:
        raise MatrixError(400, f"Invalid {name}: it must belong to {user_id}",
                          Codes.INVALID_PARAM)
    usages = key.get("usage")
    if not isinstance(usages, list) or usage not in usages \
            or not all(isinstance(u, str) for u in usages):
        raise MatrixError(400, f"Invalid {name}: 'usage' must contain '{usage}'",
                          Codes.INVALID_PARAM)
    keys = key.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise MatrixError(400, f"Invalid {name}: 'keys' must hold exactly one key",
                          Codes.INVALID_PARAM)
    key_id, public = next(iter(keys.items()))
    algorithm, _, encoded = key_id.partition(":")
    if algorithm != "ed25519" or encoded != public or not isinstance(public, str):
        raise MatrixError(400, f"Invalid {name}: expected 'ed25519:<key>': <key>",
                          Codes.INVALID_PARAM)
    try:
        valid = len(decode_base64(public)) == 32
    except ValueError:
        valid = False
    if not valid:
        raise MatrixError(400, f"Invalid {name}: not an Ed25519 public key", Codes.INVALID_PARAM)
    if "signatures" in key and not isinstance(key["signatures"], dict):
        raise MatrixError(400, f"Invalid {name}: 'signatures' must be an object",
                          Codes.INVALID_PARAM)
    return key_id, public


def _failure(status: int, errcode: str, msg: str) -> JsonDict:
    return {"status": status, "errcode": errcode, "error": msg}


class _Failure(Exception):
    def __init__(self, status: int, errcode: str, msg: str) -> None:
        super().__init__(msg)
        self.body = _failure(status, errcode, msg)


def _invalid_signature(msg: str = "Invalid signature") -> _Failure:
    return _Failure(400, INVALID_SIGNATURE, msg)


def _not_found(msg: str) -> _Failure:
    return _Failure(404, Codes.NOT_FOUND, msg)


class CrossSigningHandler:
    def __init__(self, server_name: str, clock: Clock, store: CrossSigningStore,
                 devices: DeviceStore) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._devices = devices
        # Called with (user_id, [public key or device id]) when a user's cross-signing
        # keys or the signatures on them change: a device-list change for that user, as
        # Synapse records it (DeviceListHandler.notify_device_change, wired in app.py).
        self.on_change: list[Callable[[str, list[str]], Awaitable[Any]]] = []
        # Called with (viewer, user_id, [public key]) for a change only ``viewer`` may
        # see: a new user-signing key (viewer = its owner) and a signature on another
        # user's master key (viewer = the signer), as Synapse's user-signature stream.
        self.on_private_change: list[Callable[[str, str, list[str]], Awaitable[Any]]] = []

    async def _device_ed25519(self, user_id: str, device_id: str) -> tuple[JsonDict, str] | None:
        keys = await self._store.get_device_keys(user_id, device_id)
        if not isinstance(keys, dict):
            return None
        public = (keys.get("keys") or {}).get(f"ed25519:{device_id}") \
            if isinstance(keys.get("keys"), dict) else None
        return (keys, public) if isinstance(public, str) else None

    # --- /keys/device_signing/upload ---------------------------------------------------

    async def upload_keys(self, user_id: str, body: JsonDict,
                          authenticate: Callable[[], Awaitable[Any]]) -> None:
        """Validate, then (only if the request replaces a stored key) run UIA through
        ``authenticate``, then store."""
        provided: dict[str, JsonDict] = {}
        ids: dict[str, tuple[str, str]] = {}
        for field, usage in BODY_FIELDS.items():
            if body.get(field) is None:
                continue
            ids[usage] = parse_cross_signing_key(body[field], user_id, usage)
            provided[usage] = body[field]
        if not provided:
            return
        device_ids = {d.device_id for d in await self._devices.list_devices(user_id)}
        if any(public in device_ids for _, public in ids.values()):
            raise MatrixError(403, "Key ID in use: it equals one of your device IDs",
                              Codes.FORBIDDEN)
        stored = (await self._store.get_keys([user_id])).get(user_id, {})
        if MASTER in ids:
            master_id, master_pub = ids[MASTER]
        elif MASTER in stored:
            master_id, master_pub = parse_cross_signing_key(stored[MASTER], user_id, MASTER)
        else:
            raise MatrixError(400, "No master key available", Codes.MISSING_PARAM)
        clean: dict[str, JsonDict] = {}
        for usage, key in provided.items():
            if usage == MASTER:
                clean[usage] = await self._clean_master(user_id, key, master_id, master_pub)
                continue
            if not verify_signature(key, user_id, master_id, master_pub):
                raise MatrixError(400, f"Invalid signature on the {usage} key: it must be"
                                       " signed by the master key", INVALID_SIGNATURE)
            clean[usage] = {**key, "signatures": {user_id: {
                master_id: _signature(key, user_id, master_id)}}}
        replaces = MASTER in stored and any(
            usage not in stored or _unsigned_part(stored[usage]) != _unsigned_part(key)
            for usage, key in clean.items())
        if replaces:
            await authenticate()
        await self._store.set_keys(user_id, {u: (ids[u][0], k) for u, k in clean.items()},
                                   self._clock.time_msec())
        await self._changed(user_id, [public for usage, (_, public) in ids.items()
                                      if usage != USER_SIGNING])
        if USER_SIGNING in ids:  # others never see a user-signing key: tell only its owner
            await self._changed_privately(user_id, user_id, [ids[USER_SIGNING][1]])

    async def _clean_master(self, user_id: str, key: JsonDict, master_id: str,
                            master_pub: str) -> JsonDict:
        """The master key with only the signatures that verify: its own and those of
        the user's devices."""
        kept: dict[str, str] = {}
        by_user = (key.get("signatures") or {}).get(user_id)
        for key_id in (by_user if isinstance(by_user, dict) else {}):
            if key_id == master_id:
                ok = verify_signature(key, user_id, key_id, master_pub)
            elif key_id.startswith("ed25519:"):
                device = await self._device_ed25519(user_id, key_id.partition(":")[2])
                ok = device is not None and verify_signature(key, user_id, key_id, device[1])
            else:
                ok = False
            if ok:
                kept[key_id] = by_user[key_id]
            else:
                logger.info("dropping an unverifiable signature on %s's master key", user_id)
        out = _unsigned_part(key)
        if kept:
            out["signatures"] = {user_id: kept}
        return out

    # --- /keys/signatures/upload -------------------------------------------------------

    async def upload_signatures(self, user_id: str, body: JsonDict) -> JsonDict:
        """Verify and store each signature; the bad ones are reported in ``failures``."""
        failures: dict[str, JsonDict] = {}
        to_store: list[StoredSignature] = []
        own = (await self._store.get_keys([user_id])).get(user_id, {})
        for target_user, objects in body.items():
            if not isinstance(objects, dict):
                failures[target_user] = {"*": _failure(400, Codes.INVALID_PARAM,
                                                       "Expected an object of signed keys")}
                continue
            for key_id, obj in objects.items():
                try:
                    if not isinstance(obj, dict):
                        raise _Failure(400, Codes.INVALID_PARAM, "Expected a signed object")
                    if target_user == user_id:
                        to_store.extend(await self._own_signatures(user_id, own, key_id, obj))
                    else:
                        to_store.append(await self._user_signature(user_id, own, target_user,
                                                                   key_id, obj))
                except _Failure as f:
                    failures.setdefault(target_user, {})[key_id] = f.body
        await self._store.add_signatures(to_store)
        changed: dict[str, list[str]] = {}
        for sig in to_store:
            changed.setdefault(sig.target_user_id, []).append(sig.target_id)
        for target_user, targets in changed.items():
            targets = list(dict.fromkeys(targets))
            if target_user == user_id:
                await self._changed(user_id, targets)
            else:
                # A signature on another user's master key is shown only to us, so
                # only our devices are told (as Synapse).
                await self._changed_privately(user_id, target_user, targets)
        return {"failures": failures}

    async def _own_signatures(self, user_id: str, own: Mapping[str, JsonDict], key_id: str,
                              obj: JsonDict) -> list[StoredSignature]:
        master = own.get(MASTER)
        master_pub = parse_cross_signing_key(master, user_id, MASTER)[1] if master else None
        if master is not None and key_id == master_pub:
            # Our devices signing our master key.
            if _unsigned_part(obj) != _unsigned_part(master):
                raise _invalid_signature("The signed object does not match the master key")
            by_user = (obj.get("signatures") or {}).get(user_id)
            out = []
            for signer_key in (by_user if isinstance(by_user, dict) else {}):
                if signer_key == f"ed25519:{master_pub}":
                    continue
                device = await self._device_ed25519(user_id, signer_key.partition(":")[2]) \
                    if signer_key.startswith("ed25519:") else None
                if device is None:
                    raise _not_found(f"Unknown signing key {signer_key}")
                if not verify_signature(obj, user_id, signer_key, device[1]):
                    raise _invalid_signature()
                out.append(StoredSignature(user_id, signer_key, user_id, key_id,
                                           by_user[signer_key]))
            if not out:
                raise _invalid_signature("No device signature on the master key")
            return out
        # Our self-signing key signing one of our devices.
        device = await self._device_ed25519(user_id, key_id)
        if device is None:
            raise _not_found("Unknown device or key")
        ssk = own.get(SELF_SIGNING)
        if ssk is None:
            raise _not_found("No self-signing key uploaded")
        ssk_id, ssk_pub = parse_cross_signing_key(ssk, user_id, SELF_SIGNING)
        if _unsigned_part(obj) != _unsigned_part(device[0]):
            raise _invalid_signature("The signed object does not match the device's keys")
        if not verify_signature(obj, user_id, ssk_id, ssk_pub):
            raise _invalid_signature("Missing or invalid self-signing key signature")
        return [StoredSignature(user_id, ssk_id, user_id, key_id,
                                _signature(obj, user_id, ssk_id) or "")]

    async def _user_signature(self, user_id: str, own: Mapping[str, JsonDict],
                              target_user: str, key_id: str, obj: JsonDict) -> StoredSignature:
        """Our user-signing key signing another user's master key."""
        usk = own.get(USER_SIGNING)
        if usk is None:
            raise _not_found("No user-signing key uploaded")
        usk_id, usk_pub = parse_cross_signing_key(usk, user_id, USER_SIGNING)
        master = (await self._store.get_keys([target_user])).get(target_user, {}).get(MASTER)
        if master is None or master.get("keys", {}).get(f"ed25519:{key_id}") != key_id:
            raise _not_found("Unknown master key")
        if _unsigned_part(obj) != _unsigned_part(master):
            raise _invalid_signature("The signed object does not match the master key")
        if not verify_signature(obj, user_id, usk_id, usk_pub):
            raise _invalid_signature("Missing or invalid user-signing key signature")
        return StoredSignature(user_id, usk_id, target_user, key_id,
                               _signature(obj, user_id, usk_id) or "")

    async def _changed(self, user_id: str, targets: list[str]) -> None:
        if not targets:
            return
        for hook in self.on_change:
            await hook(user_id, targets)

    async def _changed_privately(self, viewer: str, user_id: str, targets: list[str]) -> None:
        for hook in self.on_private_change:
            await hook(viewer, user_id, targets)

    async def on_device_deleted(self, user_id: str, device_id: str) -> None:
        await self._store.delete_device(user_id, device_id)

    # --- for /keys/query ---------------------------------------------------------------

    async def get_cross_signing_keys(self, user_ids: Iterable[str], from_user: str
                                     ) -> dict[str, dict[str, JsonDict]]:
        """``master_keys`` / ``self_signing_keys`` / ``user_signing_keys`` (the latter
        only for ``from_user``) of /keys/query. A master key carries the signatures of
        its owner and those ``from_user`` made on it."""
        out: dict[str, dict[str, JsonDict]] = {
            "master_keys": {}, "self_signing_keys": {}, "user_signing_keys": {}}
        for user_id, keys in (await self._store.get_keys(user_ids)).items():
            master = keys.get(MASTER)
            if master is not None:
                master = {**master, "signatures": {
                    u: dict(s) for u, s in (master.get("signatures") or {}).items()}}
                public = next(iter(master["keys"].values()))
                for sig in await self._store.get_signatures(user_id, [public]):
                    if sig.signer_user_id in (user_id, from_user):
                        master["signatures"].setdefault(sig.signer_user_id, {})[
                            sig.signer_key_id] = sig.signature
                if not master["signatures"]:
                    # An unsigned master key is shown as uploaded, with no empty
                    # ``signatures`` (Synapse; SyTest compares the object exactly).
                    del master["signatures"]
                out["master_keys"][user_id] = master
            if SELF_SIGNING in keys:
                out["self_signing_keys"][user_id] = keys[SELF_SIGNING]
            if USER_SIGNING in keys and user_id == from_user:
                out["user_signing_keys"][user_id] = keys[USER_SIGNING]
        return out

    async def query_provider(self, requester: str, users: dict[str, list[str]],
                             response: JsonDict) -> None:
        """An ``E2eKeysHandler.query_providers`` entry: adds the cross-signing keys of
        the queried users and the self-signing signatures on their devices."""
        for section, keys in (await self.get_cross_signing_keys(users, requester)).items():
            response.setdefault(section, {}).update(keys)
        await self.add_device_signatures(response.get("device_keys", {}))

    async def get_signatures_for_devices(self, devices: Mapping[str, Iterable[str]]
                                         ) -> dict[str, dict[str, dict[str, dict[str, str]]]]:
        """``{user: {device: {user: {key_id: signature}}}}``: the signatures owners made
        on their devices with their self-signing key, to merge into ``device_keys``."""
        out: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
        for user_id, device_ids in devices.items():
            for sig in await self._store.get_signatures(user_id, device_ids):
                if sig.signer_user_id != user_id:
                    continue
                out.setdefault(user_id, {}).setdefault(sig.target_id, {}).setdefault(
                    user_id, {})[sig.signer_key_id] = sig.signature
        return out

    async def add_device_signatures(self, device_keys: dict[str, dict[str, JsonDict]]) -> None:
        """Merge stored signatures into a /keys/query ``device_keys`` map in place."""
        sigs = await self.get_signatures_for_devices(
            {u: list(d) for u, d in device_keys.items()})
        for user_id, by_device in sigs.items():
            for device_id, by_signer in by_device.items():
                keys = device_keys.get(user_id, {}).get(device_id)
                if not isinstance(keys, dict):
                    continue
                merged = keys.setdefault("signatures", {})
                for signer, entries in by_signer.items():
                    merged.setdefault(signer, {}).update(entries)
