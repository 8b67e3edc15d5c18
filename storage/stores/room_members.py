"""Membership queries over ``local_current_membership`` and ``room_memberships``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from storage.database import Database
from storage.stores.state_reads import chunks


def shares_a_room(user_column: str) -> str:
    """SQL: the user in ``user_column`` is joined to a room the user of the one ``?``
    parameter is joined to. Checked from that user's rooms, stopping at the first
    shared one: the whole set of people sharing a room with an account in many large
    rooms is a join over all their members (0.34 s on SQLite for 300 rooms of 300)."""
    return ("EXISTS (SELECT 1 FROM local_current_membership b"
            " JOIN local_current_membership a ON a.room_id = b.room_id"
            f" WHERE b.user_id = {user_column} AND b.membership = 'join'"
            " AND a.user_id = ? AND a.membership = 'join')")


@dataclass(frozen=True)
class MembershipRecord:
    user_id: str
    room_id: str
    membership: str
    event_id: str
    stream_ordering: int
    forgotten: bool


_COLS = "user_id, room_id, membership, event_id, stream_ordering, forgotten"


def _row(r: tuple) -> MembershipRecord:
    return MembershipRecord(r[0], r[1], r[2], r[3], int(r[4]), bool(r[5]))


class RoomMemberStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_membership(self, user_id: str, room_id: str) -> MembershipRecord | None:
        row = await self._db.query_one(
            "get_membership",
            f"SELECT {_COLS} FROM local_current_membership WHERE user_id = ? AND room_id = ?",
            user_id, room_id,
        )
        return _row(row) if row else None

    async def rooms_for_user(self, user_id: str, memberships: tuple[str, ...] = ("join",),
                             include_forgotten: bool = False) -> list[MembershipRecord]:
        marks = ",".join("?" for _ in memberships)
        forgotten = "" if include_forgotten else " AND forgotten = ?"
        args: list = [user_id, *memberships]
        if not include_forgotten:
            args.append(False)
        rows = await self._db.query(
            "rooms_for_user",
            f"SELECT {_COLS} FROM local_current_membership WHERE user_id = ?"
            f" AND membership IN ({marks}){forgotten} ORDER BY stream_ordering",
            *args,
        )
        return [_row(r) for r in rows]

    async def members_of_room(self, room_id: str, memberships: tuple[str, ...] = ("join",)
                              ) -> list[MembershipRecord]:
        marks = ",".join("?" for _ in memberships)
        rows = await self._db.query(
            "members_of_room",
            f"SELECT {_COLS} FROM local_current_membership WHERE room_id = ?"
            f" AND membership IN ({marks}) ORDER BY user_id",
            room_id, *memberships,
        )
        return [_row(r) for r in rows]

    async def set_forgotten(self, user_id: str, room_id: str) -> bool:
        count = await self._db.execute(
            "forget_room",
            "UPDATE local_current_membership SET forgotten = ? WHERE user_id = ? AND room_id = ?"
            " AND membership IN ('leave', 'ban')",
            True, user_id, room_id,
        )
        return count > 0

    async def membership_history(self, user_id: str, room_id: str) -> list[tuple[str, int]]:
        """[(membership, stream_ordering)] of the user in the room, oldest first."""
        rows = await self._db.query(
            "membership_history",
            "SELECT membership, stream_ordering FROM room_memberships WHERE user_id = ?"
            " AND room_id = ? ORDER BY stream_ordering",
            user_id, room_id,
        )
        return [(r[0], int(r[1])) for r in rows]

    async def sharing_a_room_among(self, user_id: str, candidates: Iterable[str]) -> set[str]:
        """Those of ``candidates`` joined to a room ``user_id`` is joined to (see
        :func:`shares_a_room`)."""
        out: set[str] = set()
        for chunk in chunks(sorted(set(candidates))):
            values = ",".join("(?)" for _ in chunk)
            rows = await self._db.query(
                "sharing_a_room_among",
                f"WITH c (user_id) AS (VALUES {values})"
                f" SELECT c.user_id FROM c WHERE {shares_a_room('c.user_id')}",
                *chunk, user_id)
            out.update(r[0] for r in rows)
        return out

    async def users_sharing_rooms(self, user_id: str) -> set[str]:
        rows = await self._db.query(
            "users_sharing_rooms",
            "SELECT DISTINCT b.user_id FROM local_current_membership a"
            " JOIN local_current_membership b ON a.room_id = b.room_id"
            " WHERE a.user_id = ? AND a.membership = 'join' AND b.membership = 'join'",
            user_id,
        )
        return {r[0] for r in rows}
