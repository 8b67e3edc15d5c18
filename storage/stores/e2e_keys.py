"""Public end-to-end encryption keys: device identity keys, one-time keys and fallback
keys (``e2e_device_keys``, ``e2e_one_time_keys``, ``e2e_fallback_keys``).

Keys are stored as the canonical JSON the device uploaded. A one-time key is handed
out at most once: a claim removes the row in the same transaction that reads it, and
a claim that loses a race for a row moves on to another one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn

JsonDict = dict[str, Any]
_CHUNK = 200  # (user, device) pairs per IN (...) list
_CLAIM_ATTEMPTS = 20  # rows a claim tries before giving up on one-time keys


@dataclass(frozen=True)
class DeviceKeysRecord:
    user_id: str
    device_id: str
    keys: JsonDict
    display_name: str | None


@dataclass(frozen=True)
class ClaimedKey:
    user_id: str
    device_id: str
    algorithm: str
    key_id: str
    key: Any  # the uploaded key object (or string, for unsigned algorithms)
    fallback: bool


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class E2eKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # Device keys

    async def get_device_keys(self, user_id: str, device_id: str) -> JsonDict | None:
        row = await self._db.query_one(
            "get_device_keys",
            "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
            user_id, device_id)
        return json.loads(row[0]) if row else None

    async def set_device_keys(self, user_id: str, device_id: str, keys: JsonDict,
                              now_ms: int) -> None:
        await self._db.execute(
            "set_device_keys",
            "INSERT INTO e2e_device_keys (user_id, device_id, key_json, ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json,"
            " ts = excluded.ts",
            user_id, device_id, _dumps(keys), now_ms)

    async def query_device_keys(self, queries: Sequence[tuple[str, str | None]]
                                ) -> list[DeviceKeysRecord]:
        """Keys of existing devices: ``(user, None)`` means every device of the user.
        Joined with ``devices`` so keys of a device that is gone never show."""

        def _do(txn: Txn) -> list[DeviceKeysRecord]:
            out: list[DeviceKeysRecord] = []
            base = ("SELECT k.user_id, k.device_id, k.key_json, d.display_name"
                    " FROM e2e_device_keys k JOIN devices d"
                    " ON d.user_id = k.user_id AND d.device_id = k.device_id")
            for user_id, device_id in queries:
                if device_id is None:
                    rows = txn.query(base + " WHERE k.user_id = ? ORDER BY k.device_id",
                                     (user_id,))
                else:
                    rows = txn.query(base + " WHERE k.user_id = ? AND k.device_id = ?",
                                     (user_id, device_id))
                out.extend(DeviceKeysRecord(r[0], r[1], json.loads(r[2]), r[3]) for r in rows)
            return out

        return await self._db.run("query_device_keys", _do)

    # One-time keys

    async def add_one_time_keys(self, user_id: str, device_id: str, now_ms: int,
                                keys: Sequence[tuple[str, str, Any]]) -> list[tuple[str, str]]:
        """Store new ``(algorithm, key_id, key)`` keys. Nothing is written if a key id is
        already stored with different content; the conflicting ids are returned
        (identical re-uploads are ignored, as a retried request sends the same keys)."""

        def _do(txn: Txn) -> list[tuple[str, str]]:
            conflicts: list[tuple[str, str]] = []
            new: list[tuple[str, str, str]] = []
            for algorithm, key_id, key in keys:
                row = txn.query_one(
                    "SELECT key_json FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?"
                    " AND algorithm = ? AND key_id = ?", (user_id, device_id, algorithm, key_id))
                if row is None:
                    new.append((algorithm, key_id, _dumps(key)))
                elif not _same_key(json.loads(row[0]), key):
                    conflicts.append((algorithm, key_id))
            if conflicts:
                return conflicts
            txn.executemany(
                "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id,"
                " key_json, ts) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING",
                [(user_id, device_id, a, k, j, now_ms) for a, k, j in new])
            return []

        return await self._db.run("add_one_time_keys", _do)

    async def count_one_time_keys(self, user_id: str, device_id: str) -> dict[str, int]:
        return await self._db.run("count_one_time_keys", _one_time_key_counts,
                                  user_id, device_id)

    async def device_key_counts(self, user_id: str, device_id: str
                                ) -> tuple[dict[str, int], list[str]]:
        """The device's one-time key counts and unused fallback key types, in one
        transaction: both go into every /sync of the device."""

        def _do(txn: Txn) -> tuple[dict[str, int], list[str]]:
            return (_one_time_key_counts(txn, user_id, device_id),
                    _unused_fallback_types(txn, user_id, device_id))

        return await self._db.run("device_key_counts", _do)

    # Fallback keys

    async def set_fallback_key(self, user_id: str, device_id: str, algorithm: str,
                               key_id: str, key: Any) -> None:
        """Replace the device's fallback key of ``algorithm``. Re-uploading the same key
        keeps its used flag (as Synapse): only a new key counts as unused."""

        def _do(txn: Txn) -> None:
            row = txn.query_one(
                "SELECT key_id, key_json FROM e2e_fallback_keys WHERE user_id = ?"
                " AND device_id = ? AND algorithm = ?", (user_id, device_id, algorithm))
            if row is not None and row[0] == key_id and _same_key(json.loads(row[1]), key):
                return
            txn.execute(
                "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id,"
                " key_json, used) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET"
                " key_id = excluded.key_id, key_json = excluded.key_json, used = excluded.used",
                (user_id, device_id, algorithm, key_id, _dumps(key), False))

        await self._db.run("set_fallback_key", _do)

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        return await self._db.run("unused_fallback_key_types", _unused_fallback_types,
                                  user_id, device_id)

    # Claims

    async def claim_keys(self, wanted: Iterable[tuple[str, str, str]]) -> list[ClaimedKey]:
        """Take one key of each ``(user, device, algorithm)``: a one-time key if one is
        left (deleted as it is taken), else the fallback key (marked used)."""
        wanted = list(wanted)

        def _do(txn: Txn) -> list[ClaimedKey]:
            out: list[ClaimedKey] = []
            for user_id, device_id, algorithm in wanted:
                claimed = _claim_one_time_key(txn, user_id, device_id, algorithm)
                if claimed is None:
                    claimed = _claim_fallback_key(txn, user_id, device_id, algorithm)
                if claimed is not None:
                    out.append(claimed)
            return out

        return await self._db.run("claim_keys", _do)

    # Removal

    async def delete_device(self, user_id: str, device_id: str) -> None:
        """Forget every key of a deleted device."""

        def _do(txn: Txn) -> None:
            for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys"):
                txn.execute(f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?",
                            (user_id, device_id))

        await self._db.run("delete_device_keys", _do)


def _claim_one_time_key(txn: Txn, user_id: str, device_id: str, algorithm: str
                        ) -> ClaimedKey | None:
    """Pick a key, then delete exactly that row: the delete's row count says whether
    this transaction got it. Under READ COMMITTED a concurrent claimer that deleted it
    first makes our delete count 0 (after waiting on its row lock), so we try the next.
    PostgreSQL skips rows another claim has locked, so those losses are rare."""
    lock = " FOR UPDATE SKIP LOCKED" if txn.engine.name == "postgres" else ""
    for _ in range(_CLAIM_ATTEMPTS):
        row = txn.query_one(
            "SELECT key_id, key_json FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?"
            " AND algorithm = ? ORDER BY key_id LIMIT 1" + lock, (user_id, device_id, algorithm))
        if row is None:
            return None
        txn.execute(
            "DELETE FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?"
            " AND algorithm = ? AND key_id = ?", (user_id, device_id, algorithm, row[0]))
        if txn.rowcount == 1:
            return ClaimedKey(user_id, device_id, algorithm, row[0], json.loads(row[1]), False)
    return None


def _claim_fallback_key(txn: Txn, user_id: str, device_id: str, algorithm: str
                        ) -> ClaimedKey | None:
    row = txn.query_one(
        "SELECT key_id, key_json FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ?"
        " AND algorithm = ?", (user_id, device_id, algorithm))
    if row is None:
        return None
    txn.execute(
        "UPDATE e2e_fallback_keys SET used = ? WHERE user_id = ? AND device_id = ?"
        " AND algorithm = ?", (True, user_id, device_id, algorithm))
    return ClaimedKey(user_id, device_id, algorithm, row[0], json.loads(row[1]), True)


def _same_key(old: Any, new: Any) -> bool:
    """Two uploads of a key match if they are equal apart from signatures (Synapse's
    rule: a client may re-sign a key it already uploaded)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return ({k: v for k, v in old.items() if k != "signatures"}
                == {k: v for k, v in new.items() if k != "signatures"})
    return bool(old == new)


def _one_time_key_counts(txn: Txn, user_id: str, device_id: str) -> dict[str, int]:
    rows = txn.query("SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = ?"
                     " AND device_id = ? GROUP BY algorithm", (user_id, device_id))
    return {r[0]: int(r[1]) for r in rows}


def _unused_fallback_types(txn: Txn, user_id: str, device_id: str) -> list[str]:
    rows = txn.query("SELECT algorithm FROM e2e_fallback_keys WHERE user_id = ?"
                     " AND device_id = ? AND used = ? ORDER BY algorithm",
                     (user_id, device_id, False))
    return [r[0] for r in rows]
