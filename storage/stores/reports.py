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


# -- admin triage (issue 15): listing with filters, details, resolve, delete -----------

_ADMIN_COLS = ("r.id, r.kind, r.reporter, r.room_id, r.event_id, r.target_user_id, r.reason,"
               " r.score, r.received_ts, r.resolved_by, r.resolved_ts, r.resolution")


@dataclass(frozen=True)
class AdminReport:
    """A report with its triage state (who resolved it, when, and their note)."""

    report: ContentReport
    resolved_by: str | None
    resolved_ts: int | None
    resolution: str | None


@dataclass(frozen=True)
class ReportQuery:
    offset: int = 0
    limit: int = 100
    newest_first: bool = True  # Synapse's dir=b (the default)
    room_id: str | None = None  # exact
    reporter: str | None = None  # substring of the reporter's user id (Synapse's user_id)
    sender: str | None = None  # exact: the reported event's sender or reported user
    kind: str | None = None  # event | room | user
    resolved: bool | None = None


def _admin_row(r: tuple) -> AdminReport:  # type: ignore[type-arg]
    return AdminReport(
        ContentReport(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6],
                      None if r[7] is None else int(r[7]), int(r[8])),
        r[9], None if r[10] is None else int(r[10]), r[11])


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


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

    async def query_reports(self, q: ReportQuery) -> tuple[list[AdminReport], int]:
        """One page of reports matching ``q`` and how many match in all (``sender``:
        the reported event's sender, or the reported user)."""
        where: list[str] = []
        args: list[object] = []
        if q.room_id is not None:
            where.append("r.room_id = ?")
            args.append(q.room_id)
        if q.reporter is not None:
            where.append("LOWER(r.reporter) LIKE ? ESCAPE '\\'")
            args.append(_like(q.reporter.lower()))
        if q.kind is not None:
            where.append("r.kind = ?")
            args.append(q.kind)
        if q.sender is not None:
            where.append("(r.target_user_id = ? OR r.event_id IN"
                         " (SELECT e.event_id FROM events e WHERE e.sender = ?))")
            args += [q.sender, q.sender]
        if q.resolved is not None:
            where.append("r.resolved_ts IS NOT NULL" if q.resolved else "r.resolved_ts IS NULL")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        order = "DESC" if q.newest_first else "ASC"

        def _read(txn: Txn) -> tuple[list[AdminReport], int]:
            total = txn.query_one(f"SELECT COUNT(*) FROM content_reports r{clause}", args)
            rows = txn.query(
                f"SELECT {_ADMIN_COLS} FROM content_reports r{clause}"
                f" ORDER BY r.received_ts {order}, r.id {order} LIMIT ? OFFSET ?",
                [*args, q.limit, q.offset])
            return [_admin_row(r) for r in rows], int(total[0]) if total else 0

        return await self._db.run("query_reports", _read)

    async def get_report(self, report_id: int) -> AdminReport | None:
        row = await self._db.query_one(
            "get_report", f"SELECT {_ADMIN_COLS} FROM content_reports r WHERE r.id = ?", report_id)
        return _admin_row(row) if row else None

    async def delete_report(self, report_id: int) -> bool:
        n = await self._db.execute("delete_report", "DELETE FROM content_reports WHERE id = ?",
                                   report_id)
        return n == 1

    async def resolve_report(self, report_id: int, by: str, now_ms: int,
                             note: str | None) -> bool:
        """Mark the report resolved (again: the latest resolution replaces the last)."""
        n = await self._db.execute(
            "resolve_report",
            "UPDATE content_reports SET resolved_by = ?, resolved_ts = ?, resolution = ?"
            " WHERE id = ?", by, now_ms, note, report_id)
        return n == 1
