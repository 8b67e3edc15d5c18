"""Consent records: which policy versions each user accepted and when, and which
consent server notices were sent (schema 0038)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database


@dataclass(frozen=True)
class ConsentRecord:
    version: str
    accepted_ts: int


class ConsentStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def has_consented(self, user_id: str, version: str) -> bool:
        row = await self._db.query_one(
            "consent_has", "SELECT 1 FROM user_consents WHERE user_id = ? AND version = ?",
            user_id, version)
        return row is not None

    async def record_consent(self, user_id: str, version: str, now_ms: int) -> bool:
        """Record acceptance of ``version``; False when it was already recorded (the first
        acceptance time is kept)."""
        inserted = await self._db.execute(
            "consent_record", "INSERT INTO user_consents (user_id, version, accepted_ts)"
            " VALUES (?, ?, ?) ON CONFLICT (user_id, version) DO NOTHING",
            user_id, version, now_ms)
        return inserted > 0

    async def list_consents(self, user_id: str) -> list[ConsentRecord]:
        """Every version the user accepted, oldest first."""
        rows = await self._db.query(
            "consent_list", "SELECT version, accepted_ts FROM user_consents WHERE user_id = ?"
            " ORDER BY accepted_ts, version", user_id)
        return [ConsentRecord(str(r[0]), int(r[1])) for r in rows]

    async def latest_consent(self, user_id: str) -> ConsentRecord | None:
        records = await self.list_consents(user_id)
        return records[-1] if records else None

    async def mark_notice_sent(self, user_id: str, version: str, now_ms: int) -> bool:
        """Claim the one consent notice of ``version`` for the user; False if already sent."""
        inserted = await self._db.execute(
            "consent_notice_claim", "INSERT INTO consent_notices (user_id, version, sent_ts)"
            " VALUES (?, ?, ?) ON CONFLICT (user_id, version) DO NOTHING",
            user_id, version, now_ms)
        return inserted > 0
