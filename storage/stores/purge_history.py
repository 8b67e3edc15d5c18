"""Purging a room's history (the admin ``purge_history`` API): the SQL of one batch, and
the job rows that make a purge's status readable by id.

What a purge does to each event before the cut-off (the handler decides the cut-off;
see :mod:`homeserver.handlers.purge_history`), following Synapse:

* state events are never deleted: the room's state, its create event and everything
  auth and state groups refer to stay. They are marked ``outlier``, which takes them
  out of the timeline (/sync, /messages, /context, /event);
* message events are deleted when sent by a remote user, or by anyone with
  ``delete_local_events``; other local message events are only marked ``outlier``
  (Synapse's default: they may be the only copy of the content that exists);
* a redaction whose target is kept is never deleted (that would un-redact the target);
* forward extremities are never touched, so the room can always take new events;
* derived rows of every purged event go: relations, search text and push actions
  (a purged event no longer counts as unread or shows in /notifications); txn-id and
  state-group mappings and redaction rows go with deleted events.

State groups are not touched: they only ever refer to state events, which are kept,
and the persister's cached snapshot (current state, extremities, state group) stays
valid. Each batch is one short transaction, oldest events first, so a purge never
holds the database (on SQLite, its only connection) for long.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn
from storage.stores.event_cache import bump_epoch

_CHUNK = 200
REDACTION = "m.room.redaction"


@dataclass(frozen=True)
class PurgeBatch:
    """What one batch did; ``examined`` 0 means nothing is left to purge."""

    examined: int
    deleted: int
    hidden: int


@dataclass(frozen=True)
class PurgeJob:
    purge_id: str
    room_id: str
    status: str  # active | complete | failed
    error: str | None
    deleted_events: int
    hidden_events: int
    created_ts: int
    finished_ts: int | None


def _chunks(items: Sequence[str]) -> list[list[str]]:
    return [list(items[i:i + _CHUNK]) for i in range(0, len(items), _CHUNK)]


def _marks(chunk: Sequence[Any]) -> str:
    return ",".join("?" for _ in chunk)


def _spared_redactions(txn: Txn, redactions: list[str], doomed: set[str]) -> set[str]:
    """The redactions (of ``redactions``) whose target exists and is not being deleted:
    deleting one of them would un-redact its target."""
    spared: set[str] = set()
    for chunk in _chunks(redactions):
        rows = txn.query(
            "SELECT x.event_id, x.redacts FROM redactions x JOIN events t ON t.event_id = x.redacts"
            f" WHERE x.event_id IN ({_marks(chunk)})", chunk)
        spared.update(eid for eid, target in rows if target not in doomed)
    return spared


def _purge_batch(txn: Txn, room_id: str, before: int, local_suffix: str,
                 delete_local: bool, limit: int) -> PurgeBatch:
    rows = txn.query(
        "SELECT e.event_id, e.type, e.state_key, e.sender FROM events e"
        " WHERE e.room_id = ? AND e.stream_ordering < ? AND e.outlier = ?"
        " AND NOT EXISTS (SELECT 1 FROM room_forward_extremities f"
        "   WHERE f.room_id = e.room_id AND f.event_id = e.event_id)"
        " ORDER BY e.stream_ordering LIMIT ?",
        (room_id, before, False, limit))
    if not rows:
        return PurgeBatch(0, 0, 0)
    delete: list[str] = []
    hide: list[str] = []
    redactions: list[str] = []
    for event_id, event_type, state_key, sender in rows:
        if state_key is None and (delete_local or not str(sender).endswith(local_suffix)):
            delete.append(event_id)
            if event_type == REDACTION:
                redactions.append(event_id)
        else:
            hide.append(event_id)
    if redactions:
        spared = _spared_redactions(txn, redactions, set(delete))
        if spared:
            delete = [e for e in delete if e not in spared]
            hide.extend(spared)

    for chunk in _chunks(delete):
        m = _marks(chunk)
        txn.execute(f"DELETE FROM events WHERE event_id IN ({m})", chunk)
        txn.execute(f"DELETE FROM event_txn_ids WHERE room_id = ? AND event_id IN ({m})",
                    [room_id, *chunk])
        txn.execute(f"DELETE FROM event_state_groups WHERE event_id IN ({m})", chunk)
        txn.execute(f"DELETE FROM redactions WHERE event_id IN ({m})", chunk)
        txn.execute(f"DELETE FROM redactions WHERE redacts IN ({m})", chunk)
    for chunk in _chunks(hide):
        txn.execute(f"UPDATE events SET outlier = ? WHERE event_id IN ({_marks(chunk)})",
                    [True, *chunk])
    if delete or hide:
        bump_epoch(txn)  # no process's event cache serves them as they were
    for chunk in _chunks([r[0] for r in rows]):
        m = _marks(chunk)
        txn.execute(f"DELETE FROM event_relations WHERE event_id IN ({m})", chunk)
        txn.execute(f"DELETE FROM event_search WHERE event_id IN ({m})", chunk)
        txn.execute(f"DELETE FROM event_push_actions WHERE event_id IN ({m})", chunk)
    return PurgeBatch(len(rows), len(delete), len(hide))


def _job(row: tuple[Any, ...]) -> PurgeJob:
    return PurgeJob(row[0], row[1], row[2], row[3], int(row[4]), int(row[5]), int(row[6]),
                    int(row[7]) if row[7] is not None else None)


class PurgeHistoryStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- finding the cut-off -------------------------------------------------------------

    async def first_position_at_or_after_ts(self, room_id: str, ts: int) -> int | None:
        """The stream position of the room's first timeline event sent at or after ``ts``."""
        row = await self._db.query_one(
            "purge_first_after_ts",
            "SELECT MIN(stream_ordering) FROM events WHERE room_id = ?"
            " AND origin_server_ts >= ? AND outlier = ?",
            room_id, ts, False)
        return int(row[0]) if row and row[0] is not None else None

    async def latest_position(self, room_id: str) -> int | None:
        """The stream position of the room's latest timeline event (None: no events)."""
        row = await self._db.query_one(
            "purge_latest",
            "SELECT MAX(stream_ordering) FROM events WHERE room_id = ? AND outlier = ?",
            room_id, False)
        return int(row[0]) if row and row[0] is not None else None

    # -- the purge -----------------------------------------------------------------------

    async def purge_batch(self, room_id: str, before: int, server_name: str,
                          delete_local: bool, limit: int) -> PurgeBatch:
        """Purge up to ``limit`` timeline events older than stream position ``before``."""
        return await self._db.run("purge_history_batch", _purge_batch, room_id, before,
                                  f":{server_name}", delete_local, limit)

    # -- jobs ----------------------------------------------------------------------------

    async def create_job(self, purge_id: str, room_id: str, requested_by: str, before: int,
                         delete_local: bool, now_ms: int) -> None:
        await self._db.execute(
            "purge_job_create",
            "INSERT INTO purge_history_jobs (purge_id, room_id, requested_by,"
            " up_to_stream_ordering, delete_local_events, status, created_ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            purge_id, room_id, requested_by, before, delete_local, "active", now_ms)

    async def add_progress(self, purge_id: str, deleted: int, hidden: int) -> None:
        await self._db.execute(
            "purge_job_progress",
            "UPDATE purge_history_jobs SET deleted_events = deleted_events + ?,"
            " hidden_events = hidden_events + ? WHERE purge_id = ?",
            deleted, hidden, purge_id)

    async def finish_job(self, purge_id: str, status: str, error: str | None,
                         now_ms: int) -> None:
        await self._db.execute(
            "purge_job_finish",
            "UPDATE purge_history_jobs SET status = ?, error = ?, finished_ts = ?"
            " WHERE purge_id = ?",
            status, error, now_ms, purge_id)

    async def get_job(self, purge_id: str) -> PurgeJob | None:
        row = await self._db.query_one(
            "purge_job_get",
            "SELECT purge_id, room_id, status, error, deleted_events, hidden_events,"
            " created_ts, finished_ts FROM purge_history_jobs WHERE purge_id = ?",
            purge_id)
        return _job(row) if row else None

    async def fail_stale_jobs(self, created_before_ms: int, error: str, now_ms: int) -> int:
        """Mark jobs still ``active`` that were started before this process as failed: the
        process that ran them stopped (each batch commits on its own, so such a purge
        stopped part-way and can simply be requested again)."""
        return await self._db.execute(
            "purge_job_fail_stale",
            "UPDATE purge_history_jobs SET status = ?, error = ?, finished_ts = ?"
            " WHERE status = ? AND created_ts < ?",
            "failed", error, now_ms, "active", created_before_ms)

    async def delete_finished_before(self, ts_ms: int) -> int:
        return await self._db.execute(
            "purge_job_expire",
            "DELETE FROM purge_history_jobs WHERE finished_ts IS NOT NULL AND finished_ts < ?",
            ts_ms)
