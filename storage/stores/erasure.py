"""GDPR erasure: the purge jobs (``erasure_jobs``) and the SQL that deletes an erased
user's personal data, table family by table family.

What runs when is decided in homeserver/gdpr/erasure.py (at once, on deactivation with
``erase``) and homeserver/gdpr/erasure_purge.py (after the grace window). Every method
here is idempotent: running it again after a crash deletes nothing more and fails on
nothing, which is what makes the purge resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn
from storage.stores.event_cache import bump_epoch

_JOB_COLS = ("job_id, user_id, requested_by, status, created_ts, run_after_ts, updated_ts, "
             "step, step_cursor, steps_total, items, error")
ACTIVE_STATUSES = ("scheduled", "active")


@dataclass(frozen=True)
class ErasureJob:
    job_id: str
    user_id: str  # the pseudonym once complete
    requested_by: str | None
    status: str  # scheduled | active | complete | failed
    created_ts: int
    run_after_ts: int
    updated_ts: int | None
    step: int  # the next step to run
    step_cursor: str | None  # where a batched step stopped
    steps_total: int
    items: int
    error: str | None


@dataclass(frozen=True)
class OwnEventRow:
    event_id: str
    stream_ordering: int
    room_id: str
    room_version: str
    json: str  # as stored (sealed when event content is encrypted at rest)


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _job(r: tuple[Any, ...]) -> ErasureJob:
    return ErasureJob(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), _int(r[6]), int(r[7]),
                      r[8], int(r[9]), int(r[10]), r[11])


# Settings and keys deleted at once when a user is erased (the purge deletes them again).
# (table, WHERE clause); each clause takes the user id as its only parameters.
_KEYS_AND_SETTINGS: tuple[tuple[str, str], ...] = (
    ("e2e_device_keys", "user_id = ?"),
    ("e2e_one_time_keys", "user_id = ?"),
    ("e2e_fallback_keys", "user_id = ?"),
    ("cross_signing_keys", "user_id = ?"),
    ("cross_signing_signatures", "signer_user_id = ? OR target_user_id = ?"),
    ("room_key_backup_keys", "user_id = ?"),
    ("room_key_backup_versions", "user_id = ?"),
    ("room_key_backup_users", "user_id = ?"),
    ("pushers", "user_id = ?"),
    ("account_data", "user_id = ?"),
    ("user_filters", "user_id = ?"),
    ("push_rules", "user_id = ?"),
    ("push_rule_defaults", "user_id = ?"),
    ("push_rules_changes", "user_id = ?"),
    ("presence", "user_id = ?"),
    ("profile_fields", "user_id = ?"),
)

# Everything else of the user's, deleted by the purge (children before parents).
_ACCOUNT_ROWS: tuple[tuple[str, str], ...] = _KEYS_AND_SETTINGS + (
    ("receipts", "user_id = ?"),
    ("event_push_actions", "user_id = ?"),
    ("device_inbox", "user_id = ? OR sender = ?"),
    ("to_device_txns", "sender = ?"),
    ("device_lists_stream", "user_id = ? OR only_to = ?"),
    ("devices", "user_id = ?"),
    ("refresh_tokens", "session_id IN (SELECT session_id FROM sessions WHERE user_id = ?)"),
    ("login_tokens", "user_id = ?"),
    ("sessions", "user_id = ?"),
    ("ui_auth_stage_results",
     "session_id IN (SELECT session_id FROM ui_auth_sessions WHERE user_id = ?)"),
    ("ui_auth_sessions", "user_id = ?"),
    ("ui_auth_registrations", "user_id = ?"),
    ("openid_tokens", "user_id = ?"),
    ("mfa_recovery_codes", "user_id = ?"),
    ("mfa_totp", "user_id = ?"),
    ("known_logins", "user_id = ?"),
    ("server_notice_rooms", "user_id = ?"),
    ("threepid_binds", "user_id = ?"),
    ("profiles", "user_id = ?"),
    ("local_current_membership", "user_id = ?"),
    ("event_txn_ids", "user_id = ?"),
    ("content_reports", "reporter = ?"),
    ("gdpr_export_sections", "export_id IN (SELECT export_id FROM gdpr_exports "
                             "WHERE user_id = ? OR requested_by = ?)"),
    ("gdpr_exports", "user_id = ? OR requested_by = ?"),
    ("shadow_banned_users", "user_id = ?"),
    ("user_consents", "user_id = ?"),
    ("consent_notices", "user_id = ?"),
)

# Rows that stay (they belong to other people or to the room) but name the user in a
# column that is not theirs to keep: (table, column, replacement).
_DETACH: tuple[tuple[str, str, str | None], ...] = (
    ("content_reports", "target_user_id", None),
    ("room_aliases", "creator", ""),
    ("quarantined_media_hashes", "quarantined_by", ""),
    ("purge_history_jobs", "requested_by", ""),
    ("content_reports", "resolved_by", None),
    ("room_shutdown_jobs", "requested_by", ""),
    ("blocked_rooms", "blocked_by", ""),
    ("shadow_banned_users", "banned_by", ""),
    ("blocked_servers", "blocked_by", ""),
)


def _delete(txn: Txn, table: str, where: str, user_id: str) -> int:
    txn.execute(f"DELETE FROM {table} WHERE {where}", (user_id,) * where.count("?"))
    return max(txn.rowcount, 0)


class ErasureStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- jobs ----------------------------------------------------------------------------

    async def create_job(self, job_id: str, user_id: str, requested_by: str | None,
                         now_ms: int, run_after_ts: int, steps_total: int) -> ErasureJob:
        """A new scheduled job, or the user's unfinished one if there is one."""

        def _do(txn: Txn) -> ErasureJob:
            row = txn.query_one(
                f"SELECT {_JOB_COLS} FROM erasure_jobs WHERE user_id = ? AND status IN "
                "('scheduled', 'active') ORDER BY created_ts LIMIT 1", (user_id,))
            if row is not None:
                return _job(row)
            txn.execute(
                f"INSERT INTO erasure_jobs ({_JOB_COLS}) VALUES "
                "(?, ?, ?, 'scheduled', ?, ?, ?, 0, NULL, ?, 0, NULL)",
                (job_id, user_id, requested_by, now_ms, run_after_ts, now_ms, steps_total))
            found = txn.query_one(f"SELECT {_JOB_COLS} FROM erasure_jobs WHERE job_id = ?",
                                  (job_id,))
            assert found is not None
            return _job(found)

        return await self._db.run("erasure_create_job", _do)

    async def get_job(self, job_id: str) -> ErasureJob | None:
        row = await self._db.query_one(
            "erasure_get_job", f"SELECT {_JOB_COLS} FROM erasure_jobs WHERE job_id = ?", job_id)
        return _job(row) if row else None

    async def list_jobs(self, limit: int, before_ts: int | None) -> list[ErasureJob]:
        """Newest first, created strictly before ``before_ts`` if given."""
        where, args = ("WHERE created_ts < ?", [before_ts]) if before_ts is not None else ("", [])
        rows = await self._db.query(
            "erasure_list_jobs",
            f"SELECT {_JOB_COLS} FROM erasure_jobs {where} ORDER BY created_ts DESC, "
            "job_id DESC LIMIT ?", *args, limit)
        return [_job(r) for r in rows]

    async def due_jobs(self, now_ms: int, limit: int) -> list[ErasureJob]:
        rows = await self._db.query(
            "erasure_due_jobs",
            f"SELECT {_JOB_COLS} FROM erasure_jobs WHERE status IN ('scheduled', 'active') "
            "AND run_after_ts <= ? ORDER BY run_after_ts LIMIT ?", now_ms, limit)
        return [_job(r) for r in rows]

    async def record_progress(self, job_id: str, step: int, cursor: str | None,
                              items: int, now_ms: int) -> None:
        """The job is at ``step`` (``cursor`` inside it), ``items`` more done."""
        await self._db.execute(
            "erasure_progress",
            "UPDATE erasure_jobs SET status = 'active', step = ?, step_cursor = ?, "
            "items = items + ?, updated_ts = ?, error = NULL WHERE job_id = ?",
            step, cursor, items, now_ms, job_id)

    async def record_error(self, job_id: str, error: str, now_ms: int) -> None:
        """A step failed; the job stays active and is retried on the next run."""
        await self._db.execute(
            "erasure_error",
            "UPDATE erasure_jobs SET status = 'active', error = ?, updated_ts = ? "
            "WHERE job_id = ?", error[:500], now_ms, job_id)

    async def complete(self, job_id: str, user_id: str, pseudonym: str, now_ms: int) -> None:
        """Done: the job row keeps only the pseudonym (and an admin requester's id)."""
        await self._db.execute(
            "erasure_complete",
            "UPDATE erasure_jobs SET status = 'complete', user_id = ?, requested_by = "
            "CASE WHEN requested_by = ? THEN ? ELSE requested_by END, step = steps_total, "
            "step_cursor = NULL, error = NULL, updated_ts = ? WHERE job_id = ?",
            pseudonym, user_id, pseudonym, now_ms, job_id)

    # -- at once -------------------------------------------------------------------------

    async def delete_keys_and_settings(self, user_id: str) -> int:
        """Device, one-time, fallback and cross-signing keys, key backups, pushers,
        account data, filters, push rules, presence, extra profile fields."""

        def _do(txn: Txn) -> int:
            return sum(_delete(txn, t, w, user_id) for t, w in _KEYS_AND_SETTINGS)

        return await self._db.run("erasure_keys_settings", _do)

    async def lock(self, user_id: str) -> None:
        await self._db.execute("erasure_lock", "UPDATE users SET locked = TRUE WHERE user_id = ?",
                               user_id)

    # -- purge: events -------------------------------------------------------------------

    async def own_events_after(self, user_id: str, after_stream: int,
                               limit: int) -> list[OwnEventRow]:
        rows = await self._db.query(
            "erasure_own_events",
            "SELECT e.event_id, e.stream_ordering, e.room_id, r.room_version, e.json "
            "FROM events e "
            "JOIN rooms r ON r.room_id = e.room_id WHERE e.sender = ? AND "
            "e.stream_ordering > ? ORDER BY e.stream_ordering LIMIT ?",
            user_id, after_stream, limit)
        return [OwnEventRow(r[0], int(r[1]), r[2], r[3], r[4]) for r in rows]

    async def member_events_after(self, user_id: str, after_stream: int,
                                  limit: int) -> list[OwnEventRow]:
        """Membership events about the user sent by others (invites, kicks, bans)."""
        rows = await self._db.query(
            "erasure_member_events",
            "SELECT e.event_id, e.stream_ordering, e.room_id, r.room_version, e.json FROM "
            "room_memberships m JOIN events e ON e.event_id = m.event_id "
            "JOIN rooms r ON r.room_id = e.room_id WHERE m.user_id = ? AND "
            "m.sender <> m.user_id AND m.stream_ordering > ? "
            "ORDER BY m.stream_ordering LIMIT ?", user_id, after_stream, limit)
        return [OwnEventRow(r[0], int(r[1]), r[2], r[3], r[4]) for r in rows]

    async def replace_events(self, pruned: list[tuple[str, str]]) -> None:
        """Store each event's redacted JSON (``(event_id, json)``) and drop what was
        derived from its content: search text, relations, transaction ids."""

        def _do(txn: Txn) -> None:
            for event_id, text in pruned:
                txn.execute("UPDATE events SET json = ?, txn_id = NULL, device_id = NULL "
                            "WHERE event_id = ?", (text, event_id))
                txn.execute("DELETE FROM event_search WHERE event_id = ?", (event_id,))
                txn.execute("DELETE FROM event_relations WHERE event_id = ?", (event_id,))
            if pruned:
                bump_epoch(txn)  # no process's event cache serves them unpruned

        await self._db.run("erasure_replace_events", _do)

    # -- purge: media and exports --------------------------------------------------------

    async def media_ids(self, user_id: str, limit: int) -> list[str]:
        rows = await self._db.query(
            "erasure_media", "SELECT media_id FROM local_media WHERE owner = ? "
            "ORDER BY media_id LIMIT ?", user_id, limit)
        return [str(r[0]) for r in rows]

    async def export_ids(self, user_id: str) -> list[str]:
        rows = await self._db.query(
            "erasure_exports", "SELECT export_id FROM gdpr_exports WHERE user_id = ? OR "
            "requested_by = ?", user_id, user_id)
        return [str(r[0]) for r in rows]

    # -- purge: everything else ----------------------------------------------------------

    async def delete_account_rows(self, user_id: str) -> int:
        """Every remaining row of the user's (one transaction); returns how many."""

        def _do(txn: Txn) -> int:
            count = sum(_delete(txn, t, w, user_id) for t, w in _ACCOUNT_ROWS)
            for table, column, value in _DETACH:
                txn.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?",
                            (value, user_id))
                count += max(txn.rowcount, 0)
            return count

        return await self._db.run("erasure_account_rows", _do)

    async def tombstone_user(self, user_id: str) -> None:
        """The users row keeps only the id (reserved: never registered again) and the
        deactivated and erased marks."""
        await self._db.execute(
            "erasure_tombstone",
            "UPDATE users SET password_hash = NULL, is_admin = FALSE, admin_role = NULL, "
            "deactivated = TRUE, locked = TRUE, suspended = FALSE, "
            "password_reset_required = FALSE WHERE user_id = ?", user_id)
