"""The ``ui_auth_sessions`` tables: User-Interactive Authentication progress."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn
from storage.stores.registration_tokens import (
    release_token_txn,
    reserve_token_txn,
    use_token_txn,
)

REGISTRATION_TOKEN_STAGE = "m.login.registration_token"


class GrantSpentError(Exception):
    """A one-time grant was already used (or is no longer valid): ``what`` is
    ``"session"`` (the UIA session) or ``"registration_token"``."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclass(frozen=True)
class UiAuthSession:
    session_id: str
    created_ts: int
    uri: str
    method: str
    user_id: str | None
    serverdict: dict[str, Any]
    results: dict[str, Any]


class UiAuthStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, session_id: str, now_ms: int, uri: str, method: str, user_id: str | None
    ) -> None:
        await self._db.execute(
            "create_ui_auth_session",
            "INSERT INTO ui_auth_sessions (session_id, created_ts, uri, method, user_id, serverdict)"
            " VALUES (?, ?, ?, ?, ?, '{}')",
            session_id, now_ms, uri, method, user_id,
        )

    async def get(self, session_id: str) -> UiAuthSession | None:
        def _get(txn: Txn) -> UiAuthSession | None:
            # One statement, so one snapshot: read as two, a session spent between them
            # (on PostgreSQL's READ COMMITTED) would look like one with no stage done.
            rows = txn.query(
                "SELECT s.session_id, s.created_ts, s.uri, s.method, s.user_id, s.serverdict,"
                " r.stage_type, r.result FROM ui_auth_sessions s"
                " LEFT JOIN ui_auth_stage_results r ON r.session_id = s.session_id"
                " WHERE s.session_id = ?",
                (session_id,),
            )
            if not rows:
                return None
            row = rows[0]
            results = {r[6]: json.loads(r[7]) for r in rows if r[6] is not None}
            return UiAuthSession(row[0], int(row[1]), row[2], row[3], row[4],
                                 json.loads(row[5]), results)

        return await self._db.run("get_ui_auth_session", _get)

    async def set_server_value(self, session_id: str, key: str, value: Any) -> None:
        def _set(txn: Txn) -> None:
            row = txn.query_one("SELECT serverdict FROM ui_auth_sessions WHERE session_id = ?",
                                (session_id,))
            if row is None:
                return
            data = json.loads(row[0])
            data[key] = value
            txn.execute("UPDATE ui_auth_sessions SET serverdict = ? WHERE session_id = ?",
                        (json.dumps(data), session_id))

        await self._db.run("set_ui_auth_server_value", _set)

    async def mark_stage_complete(self, session_id: str, stage: str, result: Any) -> None:
        def _mark(txn: Txn) -> None:
            txn.execute(
                "DELETE FROM ui_auth_stage_results WHERE session_id = ? AND stage_type = ?",
                (session_id, stage),
            )
            txn.execute(
                "INSERT INTO ui_auth_stage_results (session_id, stage_type, result)"
                " VALUES (?, ?, ?)",
                (session_id, stage, json.dumps(result)),
            )

        await self._db.run("mark_ui_auth_stage", _mark)

    async def complete_token_stage(self, session_id: str, token: str, now_ms: int) -> bool:
        """Record the registration-token stage and reserve one use of the token, in one
        transaction: the reservation is taken once per session however many requests
        race to complete the stage. True if the session now holds this token."""

        def _complete(txn: Txn) -> bool:
            row = txn.query_one(
                "SELECT result FROM ui_auth_stage_results WHERE session_id = ? AND stage_type = ?",
                (session_id, REGISTRATION_TOKEN_STAGE),
            )
            if row is not None:
                return bool(json.loads(row[0]) == token)
            if not reserve_token_txn(txn, token, now_ms):
                return False
            # A concurrent completion makes this INSERT fail, rolling the reservation back.
            txn.execute(
                "INSERT INTO ui_auth_stage_results (session_id, stage_type, result) VALUES (?, ?, ?)",
                (session_id, REGISTRATION_TOKEN_STAGE, json.dumps(token)),
            )
            return True

        try:
            return await self._db.run("complete_ui_auth_token_stage", _complete)
        except Exception as e:
            if not self._db.is_integrity_error(e):
                raise
        session = await self.get(session_id)
        return session is not None and session.results.get(REGISTRATION_TOKEN_STAGE) == token

    async def delete(self, session_id: str) -> None:
        def _delete(txn: Txn) -> None:
            txn.execute("DELETE FROM ui_auth_stage_results WHERE session_id = ?", (session_id,))
            txn.execute("DELETE FROM ui_auth_sessions WHERE session_id = ?", (session_id,))

        await self._db.run("delete_ui_auth_session", _delete)

    def consumer(
        self, session_id: str, not_before_ms: int, registration_token: str | None = None
    ) -> Callable[[Txn], None]:
        """A transaction step that spends the session (and the registration-token use it
        reserved) for the caller's action, run in that action's transaction so both
        commit or neither does. Raises :class:`GrantSpentError` if another request
        spent it first, it expired (``created_ts < not_before_ms``) or the token is no
        longer usable."""

        def _consume(txn: Txn) -> None:
            _consume_session_txn(txn, session_id, not_before_ms)
            if registration_token is not None and not use_token_txn(txn, registration_token):
                raise GrantSpentError("registration_token")

        return _consume

    def registration_consumer(
        self, session_id: str, not_before_ms: int, session_created_ts: int,
        registration_token: str | None = None,
    ) -> Callable[[Txn, str], None]:
        """Like :meth:`consumer`, and also records which account the session created,
        in the same transaction, so a re-sent completed registration can be answered
        with that account rather than creating another (see :meth:`registered_user`)."""
        spend = self.consumer(session_id, not_before_ms, registration_token)

        def _consume(txn: Txn, user_id: str) -> None:
            spend(txn)
            txn.execute(
                "INSERT INTO ui_auth_registrations (session_id, user_id, created_ts)"
                " VALUES (?, ?, ?)",
                (session_id, user_id, session_created_ts),
            )

        return _consume

    async def registered_user(self, session_id: str, not_before_ms: int) -> str | None:
        """The account a spent registration session created, while the session would
        still be alive (created at or after ``not_before_ms``); else None."""
        row = await self._db.query_one(
            "get_ui_auth_registration",
            "SELECT user_id FROM ui_auth_registrations WHERE session_id = ? AND created_ts >= ?",
            session_id, not_before_ms,
        )
        return str(row[0]) if row is not None else None

    async def consume(self, session_id: str, not_before_ms: int) -> bool:
        """Spend a completed session on its own; False if it was already spent."""
        try:
            await self._db.run("consume_ui_auth_session", self.consumer(session_id, not_before_ms))
        except GrantSpentError:
            return False
        return True

    async def delete_expired(self, older_than_ms: int) -> int:
        """Delete sessions created before ``older_than_ms``, giving back the registration
        token use each reserved. A session deleted here cannot also be spent: both go
        through the same guarded DELETE. Returns how many were deleted."""

        def _expire(txn: Txn) -> int:
            rows = txn.query(
                "SELECT s.session_id, r.result FROM ui_auth_sessions s"
                " LEFT JOIN ui_auth_stage_results r"
                " ON r.session_id = s.session_id AND r.stage_type = ?"
                " WHERE s.created_ts < ?",
                (REGISTRATION_TOKEN_STAGE, older_than_ms),
            )
            count = 0
            for sid, token_json in rows:
                txn.execute("DELETE FROM ui_auth_stage_results WHERE session_id = ?", (sid,))
                txn.execute(
                    "DELETE FROM ui_auth_sessions WHERE session_id = ? AND created_ts < ?",
                    (sid, older_than_ms),
                )
                if txn.rowcount != 1:
                    continue
                count += 1
                token = json.loads(token_json) if token_json is not None else None
                if isinstance(token, str):
                    release_token_txn(txn, token)
            txn.execute("DELETE FROM ui_auth_registrations WHERE created_ts < ?",
                        (older_than_ms,))
            return count

        return await self._db.run("expire_ui_auth_sessions", _expire)


def _consume_session_txn(txn: Txn, session_id: str, not_before_ms: int) -> None:
    """The guarded DELETE only one transaction can win: on PostgreSQL a concurrent one
    waits for the row lock, then finds the row gone; SQLite runs writers one at a time."""
    txn.execute(
        "DELETE FROM ui_auth_sessions WHERE session_id = ? AND created_ts >= ?",
        (session_id, not_before_ms),
    )
    if txn.rowcount != 1:
        raise GrantSpentError("session")
    txn.execute("DELETE FROM ui_auth_stage_results WHERE session_id = ?", (session_id,))
