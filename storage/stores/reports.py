"""``content_reports``: reports of events, rooms and users, for admins.

A report names what was reported and by whom, with the reporter's reason (and the
legacy ``score``); it never copies the reported content, so admins review it through
their own, audited, access paths.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Txn


@dataclass(frozen=True)
class ContentReport:
    id: int
    kind: str  # "event" | "room" | "user"
    reporter: str
    room_id: str | None
    event_id: str | None
    target_user_id: str | None
    reason: str | None
    score: int | None
    received_ts: int


class ReportStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_report(self, kind: str, reporter: str, received_ts: int, *,
                         room_id: str | None = None, event_id: str | None = None,
                         target_user_id: str | None = None, reason: str | None = None,
                         score: int | None = None) -> int:
        def _do(txn: Txn) -> int:
            report_id = txn.next_stream_id("content_reports")
            txn.execute(
                "INSERT INTO content_reports (id, kind, reporter, room_id, event_id, target_user_id,"
                " reason, score, received_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (report_id, kind, reporter, room_id, event_id, target_user_id, reason, score,
                 received_ts),
            )
            return report_id

        return await self._db.run("add_report", _do)

    async def list_reports(self, limit: int = 100, before_id: int | None = None
                           ) -> list[ContentReport]:
        """Newest first (for the admin API)."""
        rows = await self._db.query(
            "list_reports",
            "SELECT id, kind, reporter, room_id, event_id, target_user_id, reason, score,"
            " received_ts FROM content_reports WHERE id < ? ORDER BY id DESC LIMIT ?",
            before_id if before_id is not None else 2**62, limit,
        )
        return [ContentReport(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6],
                              None if r[7] is None else int(r[7]), int(r[8])) for r in rows]
