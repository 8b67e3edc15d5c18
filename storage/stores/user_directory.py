"""User directory search over ``users`` + ``profiles``, restricted to the users the
searcher may see (Synapse's default, ``search_all_users: false``): users sharing a
joined room with the searcher, and users joined to a room that is publicly joinable
or world-readable (from ``room_stats_state``). As in Synapse, sharing a room with
oneself does not count: a user only in private rooms does not find themselves
(SyTest 52user-directory/01public.pl relies on it). Both rules are evaluated at query
time from current membership and ``room_stats_state``, so a change of join rule or
history visibility takes effect as soon as the summary row is updated.

Limits, by design for now: matching is ``LIKE`` over every active user (a scan of
``users``, fine up to some 10^5 users; a trigram / full-text index is the next step),
only local users are searched (no federation yet), and SQLite's ``LOWER()`` folds
ASCII only: there a non-ASCII letter matches in lower case or exactly as typed
("Ünver" is found by "Ünv" and "ünv" only if stored lowercase; PostgreSQL folds all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.crypto.content import PLAIN_CODEC, FieldCodec, sql_sealed
from storage.database import Database
from storage.stores.profiles import open_profile_columns
from storage.stores.room_directory import escape_like

# The display name as SQL may match it: a name sealed at rest (secrets.encrypt_profiles)
# is opaque to the database, so it never matches (users are then found by id only).
_NAME = f"(CASE WHEN {sql_sealed('p.displayname')} THEN NULL ELSE p.displayname END)"

# Separators inside a localpart that start a new "word" (alice.smith, bob_jones, ...).
_LOCALPART_SEPARATORS = (".", "_", "-")


@dataclass(frozen=True)
class DirectoryUser:
    user_id: str
    display_name: str | None
    avatar_url: str | None


def _term_clause(term: str) -> tuple[str, list[str]]:
    """One search term: a prefix of the user id (when it starts with @), of the
    localpart or of one of its words, or of the display name or one of its words,
    case-insensitively (plus the term as typed, for SQLite's ASCII-only LOWER())."""
    low = term.lower()
    e = escape_like(low)
    uid = [f"{e}%"] if low.startswith("@") else (
        [f"@{e}%"] + [f"@%{escape_like(sep)}{e}%:%" for sep in _LOCALPART_SEPARATORS])
    name = [f"{e}%", f"% {e}%"]
    parts = (["LOWER(u.user_id) LIKE ? ESCAPE '\\'"] * len(uid)
             + [f"LOWER({_NAME}) LIKE ? ESCAPE '\\'"] * len(name))
    if low != term:
        raw = escape_like(term)
        name += [f"{raw}%", f"% {raw}%"]
        parts += [f"{_NAME} LIKE ? ESCAPE '\\'"] * 2
    return "(" + " OR ".join(parts) + ")", uid + name


class UserDirectoryStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.profile_codec: FieldCodec = PLAIN_CODEC  # secrets.encrypt_profiles, at wiring

    async def search(self, searcher: str, terms: list[str], full_term: str,
                     limit: int) -> list[DirectoryUser]:
        """Up to ``limit`` visible, active users matching every term.

        Ordered: exact localpart / display name matches first, then users sharing a
        room with the searcher, then those with a display name and an avatar, then id.
        """
        if not terms:
            return []
        clauses = []
        term_args: list[Any] = []
        for term in terms:
            sql, args = _term_clause(term)
            clauses.append(sql)
            term_args += args
        full_term = full_term.lower()
        exact_local = f"@{escape_like(full_term)}:%"
        sql = (
            "SELECT u.user_id, p.displayname, p.avatar_url FROM users u"
            " LEFT JOIN profiles p ON p.user_id = u.user_id"
            " LEFT JOIN (SELECT DISTINCT b.user_id AS user_id FROM local_current_membership a"
            "   JOIN local_current_membership b ON b.room_id = a.room_id AND b.membership = ?"
            "   AND b.user_id <> a.user_id"
            "   WHERE a.user_id = ? AND a.membership = ?) sh ON sh.user_id = u.user_id"
            " WHERE u.deactivated = ? AND " + " AND ".join(clauses) +
            " AND (sh.user_id IS NOT NULL OR EXISTS (SELECT 1 FROM local_current_membership m"
            "   JOIN room_stats_state s ON s.room_id = m.room_id"
            "   WHERE m.user_id = u.user_id AND m.membership = ?"
            "   AND (s.join_rules = ? OR s.history_visibility = ?)))"
            " ORDER BY CASE WHEN LOWER(u.user_id) LIKE ? ESCAPE '\\'"
            f"   OR LOWER({_NAME}) = ? THEN 0 ELSE 1 END,"
            " CASE WHEN sh.user_id IS NULL THEN 1 ELSE 0 END,"
            " CASE WHEN p.displayname IS NULL THEN 1 ELSE 0 END,"
            " CASE WHEN p.avatar_url IS NULL THEN 1 ELSE 0 END,"
            " u.user_id"
            " LIMIT ?"
        )
        args: list[Any] = ["join", searcher, "join", False, *term_args, "join", "public",
                           "world_readable", exact_local, full_term, limit]
        rows = await self._db.query("search_user_directory", sql, *args)
        codec = self.profile_codec
        return await codec.audited(lambda: _async([
            DirectoryUser(r[0], *open_profile_columns(codec, r[0], r[1], r[2]))
            for r in rows]))


async def _async(value: Any) -> Any:
    return value
