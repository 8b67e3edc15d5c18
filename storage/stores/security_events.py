"""The ``security_events`` table: the audit trail, an append-only hash chain.

No password, token or message content is ever written here (homeserver/audit/chain.py
sanitises first). Appends hold the chain's head row for the length of one transaction
(PostgreSQL ``SELECT ... FOR UPDATE``; SQLite ``BEGIN IMMEDIATE``, which takes the write
lock at once), so concurrent writers, in one process or several, extend the chain one at
a time. What the hashes cover is decided by the caller's ``seal`` function.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Row, Txn


@dataclass(frozen=True)
class SecurityEvent:
    ts: int
    event_type: str
    outcome: str
    user_id: str | None = None  # the actor (for authentication: the account claimed)
    device_id: str | None = None
    session_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    reason: str | None = None
    details: dict[str, Any] | None = None
    action: str | None = None  # the precise action; event_type is its category
    target: str | None = None  # what was acted on (user, room, media id)
    request_id: str | None = None
    seq: int | None = None
    prev_hash: str | None = None
    entry_hash: str | None = None
    id: int | None = None  # the row id (storage detail, not hashed)
    # Chain version 2: MACs of the identifiers (homeserver/audit/chain.py); None: version 1.
    id_macs: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AuditFilter:
    """Admin query filters (all optional, combined with AND)."""

    actor: str | None = None
    target: str | None = None
    action: str | None = None
    outcome: str | None = None
    from_ts: int | None = None
    to_ts: int | None = None


# (event, seq, prev_hash) -> the event with seq, prev_hash and entry_hash set.
Sealer = Callable[[SecurityEvent, int, str], SecurityEvent]
# Checks the entries a purge is about to delete (in seq order, starting after the
# checkpoint); returns a description of the first problem, or None.
PurgeCheck = Callable[[tuple[int, str] | None, list[SecurityEvent]], str | None]

_COLS = ("id, ts, event_type, outcome, user_id, device_id, session_id, ip, user_agent, reason, "
         "details, action, target, request_id, seq, prev_hash, entry_hash, id_macs")
_INSERT_COLS = ("ts, event_type, outcome, user_id, device_id, session_id, ip, user_agent, "
                "reason, details, action, target, request_id, seq, prev_hash, entry_hash, "
                "id_macs")


def _event(r: Row) -> SecurityEvent:
    return SecurityEvent(
        id=int(r[0]), ts=int(r[1]), event_type=r[2], outcome=r[3], user_id=r[4],
        device_id=r[5], session_id=r[6], ip=r[7], user_agent=r[8], reason=r[9],
        details=json.loads(r[10]) if r[10] else None, action=r[11], target=r[12],
        request_id=r[13], seq=int(r[14]) if r[14] is not None else None, prev_hash=r[15],
        entry_hash=r[16], id_macs=json.loads(r[17]) if r[17] is not None else None,
    )


def _details_text(details: dict[str, Any] | None) -> str | None:
    return json.dumps(details, sort_keys=True, ensure_ascii=False) if details else None


class PurgeAborted(Exception):
    """The entries a purge would delete do not verify: they are kept as evidence."""


class SecurityEventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- appending -----------------------------------------------------------------------

    @staticmethod
    def _lock_head(txn: Txn) -> tuple[int, str]:
        """Start the transaction holding the chain's head; return (seq, hash)."""
        if txn.engine.name == "sqlite":
            txn.execute("BEGIN IMMEDIATE")
            row = txn.query_one("SELECT seq, entry_hash FROM audit_chain_head WHERE id = 1")
        else:
            row = txn.query_one(
                "SELECT seq, entry_hash FROM audit_chain_head WHERE id = 1 FOR UPDATE")
        if row is None:
            raise RuntimeError("audit_chain_head is missing (schema 0022 not applied)")
        return int(row[0]), str(row[1])

    @staticmethod
    def _insert(txn: Txn, ev: SecurityEvent) -> None:
        txn.execute(
            f"INSERT INTO security_events ({_INSERT_COLS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ev.ts, ev.event_type, ev.outcome, ev.user_id, ev.device_id, ev.session_id,
             ev.ip, ev.user_agent, ev.reason, _details_text(ev.details), ev.action, ev.target,
             ev.request_id, ev.seq, ev.prev_hash, ev.entry_hash,
             json.dumps(ev.id_macs, sort_keys=True) if ev.id_macs is not None else None),
        )

    @staticmethod
    def _set_head(txn: Txn, seq: int, entry_hash: str) -> None:
        txn.execute("UPDATE audit_chain_head SET seq = ?, entry_hash = ? WHERE id = 1",
                    (seq, entry_hash))

    def _append_locked(self, txn: Txn, head: tuple[int, str], ev: SecurityEvent,
                       seal: Sealer) -> SecurityEvent:
        sealed = seal(ev, head[0] + 1, head[1])
        assert sealed.entry_hash is not None and sealed.seq == head[0] + 1
        self._insert(txn, sealed)
        self._set_head(txn, sealed.seq, sealed.entry_hash)
        return sealed

    def _seal_legacy(self, txn: Txn, head: tuple[int, str], seal: Sealer) -> tuple[int, str]:
        """Chain rows written before the audit chain existed (schema < 22), in id order.
        Only ever runs while the chain is empty (head seq 0), under the head lock."""
        rows = txn.query(f"SELECT {_COLS} FROM security_events WHERE seq IS NULL ORDER BY id")
        for row in rows:
            ev = _event(row)
            sealed = seal(dataclasses.replace(ev, action=ev.action or ev.event_type),
                          head[0] + 1, head[1])
            assert sealed.entry_hash is not None
            txn.execute("UPDATE security_events SET action = ?, details = ?, seq = ?, "
                        "prev_hash = ?, entry_hash = ? WHERE id = ?",
                        (sealed.action, _details_text(sealed.details), sealed.seq,
                         sealed.prev_hash, sealed.entry_hash, ev.id))
            head = (head[0] + 1, sealed.entry_hash)
        if rows:
            self._set_head(txn, head[0], head[1])
        return head

    async def append(self, ev: SecurityEvent, seal: Sealer) -> SecurityEvent:
        """Append ``ev`` to the chain in one transaction; returns it sealed."""

        def txn_fn(txn: Txn) -> SecurityEvent:
            head = self._lock_head(txn)
            if head[0] == 0:
                head = self._seal_legacy(txn, head, seal)
            return self._append_locked(txn, head, ev, seal)

        return await self._db.run("append_security_event", txn_fn)

    async def seal_legacy(self, seal: Sealer) -> int:
        """Chain any pre-audit rows now (start-up); returns the head seq."""

        def txn_fn(txn: Txn) -> int:
            head = self._lock_head(txn)
            if head[0] == 0:
                head = self._seal_legacy(txn, head, seal)
            return head[0]

        return await self._db.run("seal_security_events", txn_fn)

    # -- reading -------------------------------------------------------------------------

    async def head(self) -> tuple[int, str]:
        """The chain's head: (seq, hash of that entry); (0, genesis) when empty."""
        row = await self._db.query_one("audit_head",
                                       "SELECT seq, entry_hash FROM audit_chain_head WHERE id = 1")
        if row is None:
            raise RuntimeError("audit_chain_head is missing (schema 0022 not applied)")
        return int(row[0]), str(row[1])

    async def latest_checkpoint(self) -> tuple[int, str] | None:
        row = await self._db.query_one(
            "audit_checkpoint",
            "SELECT seq, entry_hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
        return (int(row[0]), str(row[1])) if row else None

    async def first_unchained(self) -> int | None:
        """The row id of an entry without a sequence number (written around the chain)."""
        row = await self._db.query_one(
            "audit_unchained", "SELECT MIN(id) FROM security_events WHERE seq IS NULL")
        return int(row[0]) if row and row[0] is not None else None

    async def entries_after(self, after_seq: int, limit: int,
                            since_ts: int | None = None) -> list[SecurityEvent]:
        """Chained entries with seq > ``after_seq`` in seq order (verify and export)."""
        where, args = "seq > ?", [after_seq]
        if since_ts is not None:
            where += " AND ts >= ?"
            args.append(since_ts)
        rows = await self._db.query(
            "audit_entries_after",
            f"SELECT {_COLS} FROM security_events WHERE {where} ORDER BY seq LIMIT ?",
            *args, limit)
        return [_event(r) for r in rows]

    async def query(self, flt: AuditFilter, before_seq: int | None,
                    limit: int) -> list[SecurityEvent]:
        """Chained entries matching ``flt``, newest first, with seq < ``before_seq``."""
        where, args = ["seq IS NOT NULL"], []
        for column, value in (("user_id", flt.actor), ("target", flt.target),
                              ("action", flt.action), ("outcome", flt.outcome)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if flt.from_ts is not None:
            where.append("ts >= ?")
            args.append(flt.from_ts)
        if flt.to_ts is not None:
            where.append("ts <= ?")
            args.append(flt.to_ts)
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        rows = await self._db.query(
            "audit_query",
            f"SELECT {_COLS} FROM security_events WHERE {' AND '.join(where)} "
            "ORDER BY seq DESC LIMIT ?", *args, limit)
        return [_event(r) for r in rows]

    async def list_events(
        self, user_id: str | None = None, event_type: str | None = None, limit: int = 100
    ) -> list[SecurityEvent]:
        """Newest first, by user and/or category (tests and the detectors use this)."""
        where, args = [], []
        if user_id is not None:
            where.append("user_id = ?")
            args.append(user_id)
        if event_type is not None:
            where.append("event_type = ?")
            args.append(event_type)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._db.query(
            "list_security_events",
            f"SELECT {_COLS} FROM security_events {clause} ORDER BY id DESC LIMIT ?",
            *args, limit,
        )
        return [_event(r) for r in rows]

    # -- retention -----------------------------------------------------------------------

    async def purge_batch(self, cutoff_ts: int, batch: int, now_ms: int,
                          check: PurgeCheck, purge_event: Callable[[int, int, str], SecurityEvent],
                          seal: Sealer) -> int:
        """Delete up to ``batch`` of the oldest entries (a prefix of the chain, all older
        than ``cutoff_ts``), store the checkpoint (seq and hash of the last one deleted)
        and append the purge's own entry, all in one transaction under the head lock.

        ``check`` verifies what is about to be deleted; a chain that does not verify is
        kept (:class:`PurgeAborted`). Returns how many entries were deleted."""

        def txn_fn(txn: Txn) -> int:
            head = self._lock_head(txn)
            cp = txn.query_one("SELECT seq, entry_hash FROM audit_checkpoints "
                               "ORDER BY seq DESC LIMIT 1")
            checkpoint = (int(cp[0]), str(cp[1])) if cp else None
            rows = txn.query(f"SELECT {_COLS} FROM security_events WHERE seq > ? "
                             "ORDER BY seq LIMIT ?", (checkpoint[0] if checkpoint else 0, batch))
            doomed: list[SecurityEvent] = []
            for r in rows:
                ev = _event(r)
                if ev.ts >= cutoff_ts:
                    break  # a prefix only: the chain must stay contiguous
                doomed.append(ev)
            if not doomed:
                return 0
            problem = check(checkpoint, doomed)
            if problem is not None:
                raise PurgeAborted(problem)
            last = doomed[-1]
            assert last.seq is not None and last.entry_hash is not None
            txn.execute("DELETE FROM security_events WHERE seq > ? AND seq <= ?",
                        (doomed[0].seq - 1 if doomed[0].seq else 0, last.seq))
            txn.execute("INSERT INTO audit_checkpoints (seq, entry_hash, created_ts, cutoff_ts, "
                        "purged_count) VALUES (?, ?, ?, ?, ?)",
                        (last.seq, last.entry_hash, now_ms, cutoff_ts, len(doomed)))
            self._append_locked(txn, head, purge_event(len(doomed), last.seq, last.entry_hash),
                                seal)
            return len(doomed)

        return await self._db.run("purge_security_events", txn_fn)

    # -- erasure -------------------------------------------------------------------------

    async def entries_mentioning(self, text: str, after_id: int,
                                 limit: int) -> list[SecurityEvent]:
        """Entries whose identifier columns or details contain ``text`` (candidates for
        pseudonymisation), in row id order after ``after_id``."""
        like = "%" + text.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
        rows = await self._db.query(
            "audit_entries_mentioning",
            f"SELECT {_COLS} FROM security_events WHERE id > ? AND (user_id = ? OR "
            "target = ? OR details LIKE ? ESCAPE '!') ORDER BY id LIMIT ?",
            after_id, text, text, like, limit)
        return [_event(r) for r in rows]

    async def replace_identifiers(self, row_id: int, entry_hash: str | None,
                                  values: dict[str, Any]) -> bool:
        """Overwrite identifier columns (and ``details``) of one entry, only while it
        still has ``entry_hash`` (which never changes: version 2 hashes the MACs)."""
        allowed = {"user_id", "device_id", "session_id", "ip", "user_agent", "target",
                   "details"}
        assert values and set(values) <= allowed
        cols = sorted(values)
        args = [(_details_text(values[c]) if c == "details" else values[c]) for c in cols]
        count = await self._db.execute(
            "audit_pseudonymise",
            f"UPDATE security_events SET {', '.join(f'{c} = ?' for c in cols)} "
            "WHERE id = ? AND entry_hash = ?", *args, row_id, entry_hash)
        return bool(count)
