"""Other servers' signing keys: fetched, checked, cached, and used to verify their
signatures (X-Matrix requests now, PDUs later).

A key comes either from the server itself (``GET /_matrix/key/v2/server``) or from a
notary listed in ``federation.trusted_key_servers`` (none by default). Either way the
answer must be signed by the server's own key(s) it lists, and a notary's answer also
by that notary's configured key. Cached keys are used until their ``valid_until_ts``,
capped at 7 days after fetching (the spec: "the lesser of this field and 7 days into
the future"); keys listed in ``old_verify_keys`` verify only what was signed before
their ``expired_ts``. A server is asked again at most once a minute (a flood of
requests naming unknown key ids cannot turn us into an amplifier); concurrent lookups
for one server share one fetch.

Speed (issue 16): with notaries configured they are asked first, as Synapse does, and
a server they cannot vouch for is then asked directly. :meth:`KeyRing.prefetch` gets
the keys a batch of PDUs (a join's state) needs before it is checked: one batched
``POST /_matrix/key/v2/query`` to the notary for every server lacking keys, then the
rest directly, ``DIRECT_FETCH_CONCURRENCY`` at a time, rather than one server after
another (a room full of servers that are gone cost ~0.3 s per refused connection).
Keys read from the store are kept in memory for a minute (a join checks thousands of
signatures by the same few keys).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from signedjson.key import decode_verify_key_bytes
from signedjson.types import VerifyKey
from twisted.internet import defer

from federation.client import FederationClient, FederationError
from federation.local_keys import LocalServerKeys
from federation.x_matrix import KEY_ID
from homeserver.clock import Clock
from homeserver.config.federation import TrustedKeyServer
from homeserver.events.hashing import decode_base64
from homeserver.events.signing import SignatureError, verify_signed_json
from homeserver.lru import LruCache
from storage.stores.server_keys import RemoteKeyRecord, ServerKeyStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000
REFETCH_INTERVAL_MS = 60 * 1000
KEY_RESPONSE_MAX_SIZE = 512 * 1024
NOTARY_RESPONSE_MAX_SIZE = 4 * 1024 * 1024
KEY_FETCH_TIMEOUT_S = 30.0
MAX_KEYS_PER_RESPONSE = 100
MAX_SERVERS_PER_QUERY = 500  # servers named in one batched notary query
MAX_PREFETCH_SERVERS = 2_000  # servers fetched for one batch of PDUs
DIRECT_FETCH_CONCURRENCY = 10
KEY_MEMORY_MS = 60 * 1000  # a store read is reused this long


class KeyLookupError(SignatureError):
    """No usable key of the server could be found for the signature."""


def _verify_key(kid: str, b64: Any) -> VerifyKey:
    if not isinstance(kid, str) or not KEY_ID.match(kid) or not isinstance(b64, str):
        raise ValueError("bad key entry")
    raw = decode_base64(b64)
    if len(raw) != 32:
        raise ValueError("bad key length")
    return decode_verify_key_bytes(kid, raw)


def parse_key_response(server_name: str, response: Any, fetched_ms: int,
                       from_server: str) -> list[RemoteKeyRecord]:
    """The keys of one ``/_matrix/key/v2/server`` answer (possibly relayed by a notary),
    after checking it is about ``server_name`` and self-signed. Raises ValueError or
    :class:`SignatureError`."""
    if not isinstance(response, dict) or response.get("server_name") != server_name:
        raise ValueError("key response for another server")
    valid_until = response.get("valid_until_ts")
    verify_keys = response.get("verify_keys")
    old_keys = response.get("old_verify_keys", {})
    if not isinstance(valid_until, int) or isinstance(valid_until, bool) \
            or not isinstance(verify_keys, dict) or not isinstance(old_keys, dict):
        raise ValueError("malformed key response")
    if len(verify_keys) + len(old_keys) > MAX_KEYS_PER_RESPONSE:
        raise ValueError("too many keys")
    current = {}
    for kid, entry in verify_keys.items():
        if isinstance(kid, str) and kid.startswith("ed25519:"):
            current[kid] = _verify_key(kid, entry.get("key") if isinstance(entry, dict) else None)
    sigs = response.get("signatures", {}).get(server_name) \
        if isinstance(response.get("signatures"), dict) else None
    signed_by = [kid for kid in (sigs or {}) if kid in current]
    if not signed_by:
        raise SignatureError("key response not signed by its own key")
    for kid in signed_by:
        verify_signed_json(response, server_name, current[kid])
    key_json = json.dumps(response, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    capped = min(valid_until, fetched_ms + MAX_KEY_VALIDITY_MS)
    records = [RemoteKeyRecord(server_name, kid, entry["key"], capped, None, fetched_ms,
                               from_server, key_json) for kid, entry in verify_keys.items()
               if kid in current]
    for kid, entry in old_keys.items():
        if not isinstance(kid, str) or not kid.startswith("ed25519:") or kid in current:
            continue
        expired = entry.get("expired_ts") if isinstance(entry, dict) else None
        if not isinstance(expired, int) or isinstance(expired, bool):
            continue
        try:
            _verify_key(kid, entry.get("key"))
        except ValueError:
            continue
        records.append(RemoteKeyRecord(server_name, kid, entry["key"], expired, expired,
                                       fetched_ms, from_server, key_json))
    return records


def usable(rec: RemoteKeyRecord, ts: int) -> bool:
    """Whether ``rec`` may verify something signed at ``ts`` (an old key: only before it
    was retired; a current one: up to its capped valid_until_ts)."""
    if rec.expired_ts is not None:
        return ts < rec.expired_ts
    return ts <= rec.valid_until_ts


class KeyRing:
    def __init__(self, local: LocalServerKeys, store: ServerKeyStore, clock: Clock,
                 client: FederationClient | None,
                 notaries: Iterable[TrustedKeyServer] = ()) -> None:
        self._local = local
        self._store = store
        self._clock = clock
        self._client = client
        self._notaries = tuple(notaries)
        self._inflight: dict[str, defer.Deferred[None]] = {}
        self._last_fetch: LruCache[str, int] = LruCache(10_000)
        # server -> key id -> (record, when read from the store)
        self._memory: LruCache[str, dict[str, tuple[RemoteKeyRecord, int]]] = \
            LruCache(10_000)

    async def verify_json_for_server(self, server_name: str, obj: JsonDict, ts: int,
                                     *, enforce_validity: bool = True) -> None:
        """Check ``server_name``'s signature on ``obj`` with a key valid at ``ts``
        (``enforce_validity=False`` for room versions 1-4, which accept any key the
        server ever had). Raises :class:`SignatureError` (or :class:`KeyLookupError`)."""
        sigs = obj.get("signatures") if isinstance(obj, dict) else None
        per_server = sigs.get(server_name) if isinstance(sigs, dict) else None
        kids = sorted(k for k in (per_server or {}) if isinstance(k, str) and KEY_ID.match(k))
        if not kids:
            raise SignatureError(f"no ed25519 signature by {server_name}")
        for kid in kids:
            key = await self.get_verify_key(server_name, kid, ts if enforce_validity else None)
            if key is not None:
                verify_signed_json(obj, server_name, key)
                return
        raise KeyLookupError(f"no valid key of {server_name} for its signature")

    async def get_verify_key(self, server_name: str, key_id: str,
                             ts: int | None) -> VerifyKey | None:
        """The key ``key_id`` of ``server_name`` usable at ``ts`` (None: any time), fetching
        it if the cache has no usable copy; None if it cannot be found."""
        if server_name == self._local.server_name:
            return await self._own_key(key_id, ts)
        rec = await self._stored(server_name, key_id)
        if rec is not None and (ts is None or usable(rec, ts)):
            return _verify_key(key_id, rec.verify_key)
        await self.refresh(server_name)
        rec = await self._stored(server_name, key_id, fresh=True)
        if rec is not None and (ts is None or usable(rec, ts)):
            return _verify_key(key_id, rec.verify_key)
        return None

    async def _stored(self, server_name: str, key_id: str,
                      fresh: bool = False) -> RemoteKeyRecord | None:
        """The cached record (from memory when read less than a minute ago)."""
        now = self._clock.time_msec()
        per_server = self._memory.get(server_name)
        remembered = None if fresh or per_server is None else per_server.get(key_id)
        if remembered is not None and now - remembered[1] < KEY_MEMORY_MS:
            return remembered[0]
        rec = await self._store.remote_key(server_name, key_id)
        if per_server is None:
            per_server = {}
            self._memory.set(server_name, per_server)
        if rec is None:
            per_server.pop(key_id, None)
        elif len(per_server) < MAX_KEYS_PER_RESPONSE or key_id in per_server:
            per_server[key_id] = (rec, now)
        return rec

    async def prefetch(self, wanted: dict[str, set[str]]) -> None:
        """Fetch, together, the keys of every server in ``wanted`` (server -> key ids)
        holding none of those ids in the cache: one batched notary query, then the
        servers it could not vouch for directly, several at a time. Failures are
        logged; the signature checks that follow find no key then."""
        missing: list[str] = []
        for server, kids in list(wanted.items())[:MAX_PREFETCH_SERVERS]:
            if server == self._local.server_name or not kids:
                continue
            found = False
            for kid in sorted(kids)[:MAX_KEYS_PER_RESPONSE]:
                if await self._stored(server, kid) is not None:
                    found = True
                    break
            if not found:
                missing.append(server)
        if missing:
            await self.refresh_many(missing)

    async def refresh_many(self, servers: list[str]) -> None:
        """:meth:`refresh` for several servers in one go (shared with, and limited as,
        single refreshes)."""
        waits: list[defer.Deferred[None]] = []
        todo: list[str] = []
        now = self._clock.time_msec()
        for server in dict.fromkeys(servers):
            pending = self._inflight.get(server)
            if pending is not None:
                waits.append(pending)
                continue
            last = self._last_fetch.get(server)
            if last is not None and now - last < REFETCH_INTERVAL_MS:
                continue
            self._last_fetch.set(server, now)
            todo.append(server)
        if todo:
            d: defer.Deferred[None] = defer.ensureDeferred(self._fetch_servers(todo))
            d.addErrback(lambda f: logger.error("key fetch for %d servers failed: %s",
                                                len(todo), f.getErrorMessage()))
            for server in todo:
                self._inflight[server] = d
            waits.append(d)
            d.addBoth(self._done_inflight, todo, d)
        for pending in waits:
            await _wait(pending)

    def _done_inflight(self, result: Any, servers: list[str],
                       d: defer.Deferred[None]) -> Any:
        for server in servers:
            if self._inflight.get(server) is d:
                del self._inflight[server]
            self._forget(server)
        return result

    def _forget(self, server_name: str) -> None:
        """Drop the remembered records of a server just (re)fetched."""
        self._memory.pop(server_name)

    async def _own_key(self, key_id: str, ts: int | None) -> VerifyKey | None:
        if key_id == self._local.key_id:
            return self._local.verify_key
        for rec in await self._local_history():
            if rec.key_id == key_id and (ts is None or rec.expired_ts is None
                                         or ts < rec.expired_ts):
                return _verify_key(key_id, rec.verify_key)
        return None

    async def _local_history(self) -> list[Any]:
        return await self._store.own_keys()

    async def refresh(self, server_name: str) -> None:
        """Fetch ``server_name``'s keys (at most once a minute; concurrent callers share
        the fetch). Failures are logged, not raised: the lookup then finds nothing."""
        pending = self._inflight.get(server_name)
        if pending is not None:
            await _wait(pending)
            return
        now = self._clock.time_msec()
        last = self._last_fetch.get(server_name)
        if last is not None and now - last < REFETCH_INTERVAL_MS:
            return
        self._last_fetch.set(server_name, now)
        d: defer.Deferred[None] = defer.ensureDeferred(self._fetch_servers([server_name]))
        d.addErrback(lambda f: logger.error("key fetch for %s failed: %s", server_name,
                                            f.getErrorMessage()))
        self._inflight[server_name] = d
        try:
            await _wait(d)
        finally:
            self._inflight.pop(server_name, None)
            self._forget(server_name)

    async def _fetch_servers(self, servers: list[str]) -> None:
        """Notaries first (one batched query each for the servers still lacking keys),
        then each server left directly, ``DIRECT_FETCH_CONCURRENCY`` at a time."""
        if self._client is None:
            return
        left = list(servers)
        for notary in self._notaries:
            if not left:
                return
            got: set[str] = set()
            for i in range(0, len(left), MAX_SERVERS_PER_QUERY):
                chunk = left[i:i + MAX_SERVERS_PER_QUERY]
                try:
                    got |= await self._fetch_from_notary(notary, chunk)
                except (FederationError, ValueError, SignatureError) as e:
                    logger.info("fetching keys of %d servers from %s failed: %s",
                                len(chunk), notary.server_name, e)
            left = [s for s in left if s not in got]
        if not left:
            return
        limit = defer.DeferredSemaphore(DIRECT_FETCH_CONCURRENCY)
        await defer.gatherResults(
            [limit.run(lambda s=s: defer.ensureDeferred(self._fetch_direct(s)))
             for s in left], consumeErrors=True)

    async def _fetch_direct(self, server_name: str) -> None:
        assert self._client is not None
        try:
            answer = await self._client.get_json(
                server_name, "/_matrix/key/v2/server", signed=False,
                timeout=KEY_FETCH_TIMEOUT_S, max_size=KEY_RESPONSE_MAX_SIZE)
            records = parse_key_response(server_name, answer, self._clock.time_msec(),
                                         server_name)
            await self._store.store_remote_keys(records)
        except (FederationError, ValueError, SignatureError) as e:
            logger.info("fetching keys of %s directly failed: %s", server_name, e)

    async def _fetch_from_notary(self, notary: TrustedKeyServer,
                                 servers: list[str]) -> set[str]:
        """Ask ``notary`` for ``servers``' keys in one query; the servers it gave good
        keys of (stored). A bad signature by the notary fails the whole answer."""
        assert self._client is not None
        answer = await self._client.post_json(
            notary.server_name, "/_matrix/key/v2/query",
            {"server_keys": {s: {} for s in servers}},
            timeout=KEY_FETCH_TIMEOUT_S, max_size=NOTARY_RESPONSE_MAX_SIZE)
        entries = answer.get("server_keys") if isinstance(answer, dict) else None
        if not isinstance(entries, list):
            raise ValueError("malformed notary answer")
        wanted = set(servers)
        now = self._clock.time_msec()
        records: list[RemoteKeyRecord] = []
        got: set[str] = set()
        for entry in entries[:MAX_KEYS_PER_RESPONSE * max(1, len(servers))]:
            name = entry.get("server_name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or name not in wanted:
                continue
            if not self._signed_by_notary(notary, entry):
                raise SignatureError("notary answer not signed by its configured key")
            try:
                found = parse_key_response(name, entry, now, notary.server_name)
            except (ValueError, SignatureError) as e:
                logger.info("notary %s gave bad keys of %s: %s", notary.server_name, name, e)
                continue
            if found:
                records += found
                got.add(name)
        if records:
            await self._store.store_remote_keys(records)
        return got

    @staticmethod
    def _signed_by_notary(notary: TrustedKeyServer, entry: JsonDict) -> bool:
        for kid, b64 in notary.verify_keys.items():
            try:
                verify_signed_json(entry, notary.server_name, _verify_key(kid, b64))
                return True
            except (SignatureError, ValueError):
                continue
        return False


async def _wait(d: defer.Deferred[None]) -> None:
    """Wait for a shared Deferred without consuming its result for other waiters."""
    waiter: defer.Deferred[None] = defer.Deferred()

    def done(result: Any) -> Any:
        waiter.callback(None)
        return result

    d.addBoth(done)
    await waiter
