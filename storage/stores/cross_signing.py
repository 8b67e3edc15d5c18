"""``cross_signing_keys`` (each user's current master / self-signing / user-signing
public key) and ``cross_signing_signatures`` (verified signatures uploaded with
/keys/signatures/upload)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn

JsonDict = dict[str, Any]
_CHUNK = 200  # ids per IN (...) list


@dataclass(frozen=True)
class StoredSignature:
    signer_user_id: str
    signer_key_id: str
    target_user_id: str
    target_id: str
    signature: str


def _chunks(items: Iterable[str]) -> Iterable[list[str]]:
    ids = list(dict.fromkeys(items))
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


class CrossSigningStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_keys(self, user_ids: Iterable[str]) -> dict[str, dict[str, JsonDict]]:
        """``{user_id: {key_type: key_json}}`` for the users that have keys."""
        out: dict[str, dict[str, JsonDict]] = {}
        for chunk in _chunks(user_ids):
            marks = ",".join("?" for _ in chunk)
            rows = await self._db.query(
                "get_cross_signing_keys",
                f"SELECT user_id, key_type, key_json FROM cross_signing_keys"
                f" WHERE user_id IN ({marks})", *chunk)
            for user_id, key_type, key_json in rows:
                out.setdefault(user_id, {})[key_type] = json.loads(key_json)
        return out

    async def set_keys(self, user_id: str, keys: Mapping[str, tuple[str, JsonDict]],
                       now_ms: int) -> None:
        """Store ``{key_type: (key_id, key_json)}``. Signatures made by or on a key that
        is replaced are deleted with it: they vouch for a key nobody uses any more."""

        def _do(txn: Txn) -> None:
            for key_type, (key_id, key) in keys.items():
                row = txn.query_one(
                    "SELECT key_id FROM cross_signing_keys WHERE user_id = ? AND key_type = ?",
                    (user_id, key_type))
                if row is not None and row[0] != key_id:
                    old_id = row[0]
                    txn.execute("DELETE FROM cross_signing_signatures WHERE signer_user_id = ?"
                                " AND signer_key_id = ?", (user_id, old_id))
                    txn.execute("DELETE FROM cross_signing_signatures WHERE target_user_id = ?"
                                " AND target_id = ?", (user_id, old_id.partition(":")[2]))
                txn.execute(
                    "INSERT INTO cross_signing_keys (user_id, key_type, key_id, key_json,"
                    " updated_ts) VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, key_type)"
                    " DO UPDATE SET key_id = excluded.key_id, key_json = excluded.key_json,"
                    " updated_ts = excluded.updated_ts",
                    (user_id, key_type, key_id, json.dumps(key, sort_keys=True), now_ms))

        await self._db.run("set_cross_signing_keys", _do)

    async def add_signatures(self, signatures: Sequence[StoredSignature]) -> None:
        if not signatures:
            return

        def _do(txn: Txn) -> None:
            txn.executemany(
                "INSERT INTO cross_signing_signatures (signer_user_id, signer_key_id,"
                " target_user_id, target_id, signature) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (signer_user_id, signer_key_id, target_user_id, target_id)"
                " DO UPDATE SET signature = excluded.signature",
                [(s.signer_user_id, s.signer_key_id, s.target_user_id, s.target_id,
                  s.signature) for s in signatures])

        await self._db.run("add_cross_signing_signatures", _do)

    async def get_signatures(self, target_user_id: str, target_ids: Iterable[str]
                             ) -> list[StoredSignature]:
        """Signatures on these devices / keys of ``target_user_id``, by anyone."""
        out: list[StoredSignature] = []
        for chunk in _chunks(target_ids):
            marks = ",".join("?" for _ in chunk)
            rows = await self._db.query(
                "get_cross_signing_signatures",
                f"SELECT signer_user_id, signer_key_id, target_user_id, target_id, signature"
                f" FROM cross_signing_signatures WHERE target_user_id = ?"
                f" AND target_id IN ({marks})", target_user_id, *chunk)
            out.extend(StoredSignature(*r) for r in rows)
        return out

    async def delete_device(self, user_id: str, device_id: str) -> None:
        """Forget signatures on a deleted device and made by its key."""

        def _do(txn: Txn) -> None:
            txn.execute("DELETE FROM cross_signing_signatures WHERE target_user_id = ?"
                        " AND target_id = ?", (user_id, device_id))
            txn.execute("DELETE FROM cross_signing_signatures WHERE signer_user_id = ?"
                        " AND signer_key_id = ?", (user_id, f"ed25519:{device_id}"))

        await self._db.run("delete_device_cross_signatures", _do)

    async def get_device_keys(self, user_id: str, device_id: str) -> JsonDict | None:
        """The device's uploaded DeviceKeys object (table owned by the e2e keys store),
        which a signature upload must match and whose ed25519 key verifies device
        signatures."""
        row = await self._db.query_one(
            "cross_signing_device_keys",
            "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
            user_id, device_id)
        return json.loads(row[0]) if row is not None else None
