"""Answering notary key queries (``/_matrix/key/v2/query``): other servers' keys from
our cache, fetched from the server itself when the cache has nothing valid long enough,
each answer with our signature added beside the origin's (spec: "the notary server
must sign the keys returned by the queried server").

Only direct fetches are made on a query's behalf (never via our own notaries), and
they share the keyring's once-a-minute limit, so queries cannot make us hammer a
server. A server that cannot be reached and has no cached keys is left out.
"""

from __future__ import annotations

import json
from typing import Any

from federation.keyring import KeyRing
from federation.local_keys import LocalServerKeys
from federation.x_matrix import is_valid_server_name
from homeserver.clock import Clock
from storage.stores.server_keys import RemoteKeyRecord, ServerKeyStore

JsonDict = dict[str, Any]

MAX_SERVERS_PER_QUERY = 100
MAX_KEY_IDS_PER_SERVER = 100


class NotaryHandler:
    def __init__(self, local: LocalServerKeys, keyring: KeyRing, store: ServerKeyStore,
                 clock: Clock) -> None:
        self._local = local
        self._keyring = keyring
        self._store = store
        self._clock = clock

    async def query(self, criteria: dict[str, dict[str, int | None]],
                    min_valid_all: int | None = None) -> JsonDict:
        """``criteria``: server name → {key id → minimum_valid_until_ts or None}; an
        empty mapping asks for every key of the server, valid until ``min_valid_all``
        (default: now)."""
        out: list[JsonDict] = []
        now = self._clock.time_msec()
        for server_name, wanted in list(criteria.items())[:MAX_SERVERS_PER_QUERY]:
            if not is_valid_server_name(server_name):
                continue
            if server_name == self._local.server_name:
                out.append(await self._local.key_response())
                continue
            out += await self._answer_for(server_name, wanted, min_valid_all or now)
        return {"server_keys": out}

    async def _answer_for(self, server_name: str, wanted: dict[str, int | None],
                          default_min: int) -> list[JsonDict]:
        min_valid = max([v for v in wanted.values() if v is not None] or [default_min])
        records = await self._store.remote_keys(server_name)
        if not self._satisfied(records, wanted, min_valid):
            await self._keyring.refresh(server_name)
            records = await self._store.remote_keys(server_name)
        if wanted:
            records = [r for r in records if r.key_id in wanted]
        seen: set[str] = set()
        answers = []
        for rec in sorted(records, key=lambda r: -r.fetched_ts):
            if rec.key_json in seen:
                continue
            seen.add(rec.key_json)
            answers.append(self._local.sign(json.loads(rec.key_json)))
        return answers

    @staticmethod
    def _satisfied(records: list[RemoteKeyRecord], wanted: dict[str, int | None],
                   min_valid: int) -> bool:
        current = {r.key_id: r for r in records if r.expired_ts is None}
        if not wanted:
            return any(r.valid_until_ts >= min_valid for r in current.values())
        for kid in wanted:
            rec = next((r for r in records if r.key_id == kid), None)
            if rec is None or (rec.expired_ts is None and rec.valid_until_ts < min_valid):
                return False
        return True
