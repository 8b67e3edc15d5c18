"""``pushers``: where a user's notifications should be pushed, and each HTTP pusher's
delivery position (homeserver/push/sender/): the stream ordering of the last push
action handled, so delivery resumes exactly there after a restart.

A pushkey is a device's push token: with ``secrets.at_rest_key`` it is stored sealed
(homeserver/crypto/at_rest.py, bound to its user and app id) and found by
``pushkey_hash``, a keyed hash (schema/0039). Every lookup by (app id, pushkey) matches
the hashes under each configured key (a rotation may be half-way) and, for rows
written before a key or the column existed, the plaintext value."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from homeserver.crypto.at_rest import PLAINTEXT_VAULT, AtRestError, Location, SecretVault
from storage.database import Database, Txn

_COLS = ("app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang,"
         " data, device_id, created_ts, last_stream_ordering, failing_since")
_CHUNK = 100
# A push action is unread while no m.read / m.read.private receipt (unthreaded, or of
# its thread) is at or after it: the same rule as GET /notifications.
_UNREAD = ("NOT EXISTS (SELECT 1 FROM receipts r WHERE r.room_id = a.room_id"
           " AND r.receipt_type IN ('m.read', 'm.read.private') AND r.user_id = a.user_id"
           " AND r.thread_id IN ('', a.thread_id) AND r.event_stream_ordering >= a.stream_ordering)")


@dataclass(frozen=True)
class Pusher:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]
    device_id: str | None
    created_ts: int
    last_stream_ordering: int = 0
    failing_since: int | None = None


@dataclass(frozen=True)
class PendingPush:
    """One unread, notifying push action an HTTP pusher has still to send."""

    event_id: str
    room_id: str
    stream_ordering: int
    actions_json: str


PUSHKEY_PURPOSE = "pushers.pushkey"


def pushkey_location(user_id: str, app_id: str) -> Location:
    return Location("pushers", "pushkey", json.dumps([user_id, app_id]))


def _pusher(user_id: str, r: Any, vault: SecretVault) -> Pusher:
    pushkey = vault.open_sync(r[1], pushkey_location(user_id, r[0]))
    return Pusher(user_id, r[0], pushkey, r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8],
                  int(r[9]), int(r[10]), None if r[11] is None else int(r[11]))


class PusherStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.vault: SecretVault = PLAINTEXT_VAULT  # secrets at rest, set at wiring

    def _key(self, app_id: str, pushkey: str) -> tuple[str, list[Any]]:
        """WHERE fragment and arguments matching the (app_id, pushkey) rows."""
        hashes = self.vault.lookup_hashes(pushkey, PUSHKEY_PURPOSE)
        marks = ",".join("?" for _ in hashes)
        return (f"app_id = ? AND (pushkey_hash IN ({marks})"
                " OR (pushkey_hash IS NULL AND pushkey = ?))", [app_id, *hashes, pushkey])

    async def _pushers(self, rows: list[Any], user_id: str | None = None) -> list[Pusher]:
        """Rows (``_COLS``, prefixed by user_id unless given) as Pushers; a refused
        sealed pushkey is audited before its AtRestError propagates."""
        try:
            if user_id is not None:
                return [_pusher(user_id, r, self.vault) for r in rows]
            return [_pusher(r[0], r[1:], self.vault) for r in rows]
        except AtRestError as e:
            await self.vault.refused(e)
            raise

    async def get_pushers(self, user_id: str) -> list[Pusher]:
        rows = await self._db.query(
            "get_pushers",
            f"SELECT {_COLS} FROM pushers WHERE user_id = ? ORDER BY created_ts, app_id, pushkey",
            user_id,
        )
        return await self._pushers(rows, user_id)

    async def set_pusher(self, p: Pusher, remove_for_other_users: bool) -> None:
        """Create or replace the (user, app_id, pushkey) pusher; ``remove_for_other_users``
        drops other users' pushers with the same app_id and pushkey (``append: false``).
        Delivery starts after the newest event: a new pusher is not sent history."""
        key, key_args = self._key(p.app_id, p.pushkey)
        sealed = self.vault.seal(p.pushkey, pushkey_location(p.user_id, p.app_id))
        lookup = self.vault.lookup_hash(p.pushkey, PUSHKEY_PURPOSE)

        def _do(txn: Txn) -> None:
            if remove_for_other_users:
                txn.execute(f"DELETE FROM pushers WHERE {key} AND user_id <> ?",
                            (*key_args, p.user_id))
            txn.execute(f"DELETE FROM pushers WHERE user_id = ? AND {key}",
                        (p.user_id, *key_args))
            txn.execute(
                "INSERT INTO pushers (user_id, app_id, pushkey, pushkey_hash, kind,"
                " app_display_name, device_display_name, profile_tag, lang, data, device_id,"
                " created_ts, last_stream_ordering) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " COALESCE((SELECT MAX(stream_ordering) FROM events), 0))",
                (p.user_id, p.app_id, sealed, lookup, p.kind, p.app_display_name,
                 p.device_display_name, p.profile_tag, p.lang,
                 json.dumps(p.data, ensure_ascii=False, sort_keys=True), p.device_id, p.created_ts),
            )

        await self._db.run("set_pusher", _do)

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> bool:
        key, key_args = self._key(app_id, pushkey)
        count = await self._db.execute(
            "delete_pusher", f"DELETE FROM pushers WHERE user_id = ? AND {key}",
            user_id, *key_args,
        )
        return count > 0

    async def delete_device_pushers(self, user_id: str, device_id: str) -> int:
        """For when a device logs out (its pushers must stop)."""
        return await self._db.execute(
            "delete_device_pushers", "DELETE FROM pushers WHERE user_id = ? AND device_id = ?",
            user_id, device_id,
        )

    # -- delivery (homeserver/push/sender/) -----------------------------------------------

    async def get_pusher(self, user_id: str, app_id: str, pushkey: str) -> Pusher | None:
        key, key_args = self._key(app_id, pushkey)
        row = await self._db.query_one(
            "get_pusher", f"SELECT {_COLS} FROM pushers WHERE user_id = ? AND {key}",
            user_id, *key_args,
        )
        return (await self._pushers([row], user_id))[0] if row else None

    async def http_pushers_for_users(self, user_ids: list[str]) -> list[Pusher]:
        out: list[Pusher] = []
        ids = list(dict.fromkeys(user_ids))
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i:i + _CHUNK]
            marks = ",".join("?" for _ in chunk)
            rows = await self._db.query(
                "http_pushers_for_users",
                f"SELECT user_id, {_COLS} FROM pushers WHERE kind = 'http'"
                f" AND user_id IN ({marks}) ORDER BY user_id, created_ts, app_id, pushkey",
                *chunk,
            )
            out.extend(await self._pushers(rows))
        return out

    async def http_pushers_with_pending(self) -> list[Pusher]:
        """HTTP pushers with notifying push actions after their position (start-up)."""
        rows = await self._db.query(
            "http_pushers_with_pending",
            f"SELECT p.user_id, {', '.join('p.' + c.strip() for c in _COLS.split(','))}"
            " FROM pushers p WHERE p.kind = 'http' AND EXISTS (SELECT 1 FROM"
            " event_push_actions a WHERE a.user_id = p.user_id AND a.notify = 1"
            " AND a.stream_ordering > p.last_stream_ordering)",
        )
        return await self._pushers(rows)

    async def pending_pushes(self, user_id: str, after: int, limit: int) -> list[PendingPush]:
        """The user's unread notifying push actions after ``after``, oldest first."""
        rows = await self._db.query(
            "pending_pushes",
            "SELECT a.event_id, a.room_id, a.stream_ordering, a.actions FROM event_push_actions a"
            f" WHERE a.user_id = ? AND a.notify = 1 AND a.stream_ordering > ? AND {_UNREAD}"
            " ORDER BY a.stream_ordering LIMIT ?",
            user_id, after, limit,
        )
        return [PendingPush(r[0], r[1], int(r[2]), r[3]) for r in rows]

    async def is_unread(self, user_id: str, event_id: str) -> bool:
        """Whether this push action is still notifying and unread (a late arrival)."""
        row = await self._db.query_one(
            "push_is_unread",
            f"SELECT 1 FROM event_push_actions a WHERE a.user_id = ? AND a.event_id = ?"
            f" AND a.notify = 1 AND {_UNREAD}",
            user_id, event_id,
        )
        return row is not None

    async def advance_pusher(self, user_id: str, app_id: str, pushkey: str, position: int,
                             success_ts: int | None) -> bool:
        """Move the pusher's position forward (never back: a pusher replaced meanwhile
        keeps its newer start) and clear its failure; False if it no longer exists."""
        key, key_args = self._key(app_id, pushkey)

        def _do(txn: Txn) -> bool:
            txn.execute(
                "UPDATE pushers SET last_stream_ordering = ?, failing_since = NULL,"
                " last_success_ts = COALESCE(?, last_success_ts) WHERE user_id = ?"
                f" AND {key} AND last_stream_ordering < ?",
                (position, success_ts, user_id, *key_args, position))
            return txn.query_one(
                f"SELECT 1 FROM pushers WHERE user_id = ? AND {key}",
                (user_id, *key_args)) is not None

        return await self._db.run("advance_pusher", _do)

    async def set_failing_since(self, user_id: str, app_id: str, pushkey: str,
                                since: int | None) -> None:
        key, key_args = self._key(app_id, pushkey)
        await self._db.execute(
            "set_pusher_failing_since",
            f"UPDATE pushers SET failing_since = ? WHERE user_id = ? AND {key}",
            since, user_id, *key_args,
        )

    # -- secrets at rest (``parley keys rotate``) ------------------------------------------

    async def stored_pushkeys(self, after: tuple[str, str, str], limit: int
                              ) -> list[tuple[str, str, str, str | None]]:
        """(user id, app id, pushkey as stored, its hash) after ``after`` (that triple)."""
        rows = await self._db.query(
            "stored_pushkeys",
            "SELECT user_id, app_id, pushkey, pushkey_hash FROM pushers WHERE user_id > ?"
            " OR (user_id = ? AND (app_id > ? OR (app_id = ? AND pushkey > ?)))"
            " ORDER BY user_id, app_id, pushkey LIMIT ?",
            after[0], after[0], after[1], after[1], after[2], limit)
        return [(str(r[0]), str(r[1]), str(r[2]), r[3]) for r in rows]

    def needs_reseal(self, stored: str, lookup: str | None) -> bool:
        """Not sealed, or its hash not computed, under the active key."""
        if self.vault.keyring is None:
            return False
        return self.vault.needs_reseal(stored) or not (lookup or "").startswith(
            self.vault.keyring.active + ":")

    async def reseal_pushkey(self, user_id: str, app_id: str, stored: str) -> bool:
        """Re-seal one pushkey and its hash under the active key, in its own
        transaction, only if unchanged meanwhile. AtRestError (audited) if ``stored``
        cannot be opened."""
        loc = pushkey_location(user_id, app_id)
        plain = await self.vault.open(stored, loc)
        assert plain is not None
        n = await self._db.execute(
            "reseal_pushkey",
            "UPDATE pushers SET pushkey = ?, pushkey_hash = ? WHERE user_id = ? AND app_id = ?"
            " AND pushkey = ?",
            self.vault.seal(plain, loc), self.vault.lookup_hash(plain, PUSHKEY_PURPOSE),
            user_id, app_id, stored)
        return n == 1
