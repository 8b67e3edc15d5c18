"""The ``push_rules``, ``push_rule_defaults`` and ``push_rules_changes`` tables.

User rules are ordered by ``priority`` within (user, kind), highest first. Every change
first takes a position on the ``account_data`` stream and writes it to the user's
``push_rules_changes`` row: /sync compares positions to know when to resend
``m.push_rules``, and the row's lock serialises one user's concurrent changes, so
relative placement (``before``/``after``) never works on a stale ordering.
Conditions and actions are stored as the JSON text the handler made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from storage.database import Database, Txn

_CHUNK = 500  # user ids per query


class PushRuleNotFoundError(Exception):
    """The rule to change does not exist (nothing was written)."""


class RelativeRuleNotFoundError(Exception):
    """``before``/``after`` names a rule the user does not have."""

    def __init__(self, rule_id: str) -> None:
        super().__init__(rule_id)
        self.rule_id = rule_id


class TooManyPushRulesError(Exception):
    """The user already has the maximum number of rules."""


@dataclass(frozen=True)
class StoredRule:
    kind: str
    rule_id: str
    priority: int
    conditions_json: str
    pattern: str | None
    actions_json: str
    enabled: bool


@dataclass(frozen=True)
class DefaultOverride:
    """A user's change to a server-default rule; None fields keep the default."""

    enabled: bool | None
    actions_json: str | None


_RULE_COLUMNS = "kind, rule_id, priority, conditions, pattern, actions, enabled"


def _bump(txn: Txn, user_id: str) -> int:
    stream_id = txn.next_stream_id("account_data")
    txn.execute(
        "INSERT INTO push_rules_changes (user_id, stream_id) VALUES (?, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id",
        (user_id, stream_id),
    )
    return stream_id


def _rule_priority(txn: Txn, user_id: str, kind: str, rule_id: str) -> int | None:
    row = txn.query_one(
        "SELECT priority FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?",
        (user_id, kind, rule_id),
    )
    return int(row[0]) if row else None


class PushRulesStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_rules(
        self, user_id: str
    ) -> tuple[list[StoredRule], dict[tuple[str, str], DefaultOverride]]:
        """The user's own rules (by kind, most important first) and their changes to
        server-default rules keyed by (kind, rule_id), read in one transaction."""

        def _get(txn: Txn) -> tuple[list[StoredRule], dict[tuple[str, str], DefaultOverride]]:
            rows = txn.query(
                f"SELECT {_RULE_COLUMNS} FROM push_rules WHERE user_id = ?"
                " ORDER BY kind, priority DESC, rule_id",
                (user_id,),
            )
            rules = [StoredRule(r[0], r[1], int(r[2]), r[3], r[4], r[5], bool(r[6])) for r in rows]
            overrides = {
                (r[0], r[1]): DefaultOverride(None if r[2] is None else bool(r[2]), r[3])
                for r in txn.query(
                    "SELECT kind, rule_id, enabled, actions FROM push_rule_defaults"
                    " WHERE user_id = ?", (user_id,),
                )
            }
            return rules, overrides

        return await self._db.run("get_push_rules", _get)

    async def users_with_own_rules(self, user_ids: Iterable[str]) -> set[str]:
        """Which of these users have a rule of their own or a change to a predefined
        one (the others run the server defaults: evaluated in bulk, push/bulk.py)."""
        ids = list(dict.fromkeys(user_ids))

        def _get(txn: Txn) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i:i + _CHUNK]
                marks = ",".join("?" for _ in chunk)
                for table in ("push_rules", "push_rule_defaults"):
                    found.update(r[0] for r in txn.query(
                        f"SELECT DISTINCT user_id FROM {table} WHERE user_id IN ({marks})",
                        chunk))
            return found

        if not ids:
            return set()
        return await self._db.run("users_with_own_push_rules", _get)

    async def get_stream_id(self, user_id: str) -> int:
        """Position of the user's last push rule change (0: never changed)."""
        row = await self._db.query_one(
            "get_push_rules_stream_id",
            "SELECT stream_id FROM push_rules_changes WHERE user_id = ?", user_id,
        )
        return int(row[0]) if row else 0

    async def upsert_rule(
        self, user_id: str, kind: str, rule_id: str, conditions_json: str,
        pattern: str | None, actions_json: str, before: str | None, after: str | None,
        max_rules: int,
    ) -> int:
        """Create or replace a user rule; returns the stream position of the change.

        New rules go first among the user's rules of their kind unless placed with
        ``before`` (just above that rule) or ``after`` (just below it; ``before`` wins
        when both are given). A replaced rule keeps its place and enabled state unless
        placed again. Raises :class:`RelativeRuleNotFoundError` or
        :class:`TooManyPushRulesError`.
        """

        def _upsert(txn: Txn) -> int:
            stream_id = _bump(txn, user_id)
            existing = txn.query_one(
                "SELECT enabled FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?",
                (user_id, kind, rule_id),
            )
            relative = before if before is not None else after
            if relative is None and existing is not None:
                txn.execute(
                    "UPDATE push_rules SET conditions = ?, pattern = ?, actions = ?"
                    " WHERE user_id = ? AND kind = ? AND rule_id = ?",
                    (conditions_json, pattern, actions_json, user_id, kind, rule_id),
                )
                return stream_id
            if existing is None:
                count = txn.query_one("SELECT COUNT(*) FROM push_rules WHERE user_id = ?",
                                      (user_id,))
                if count is not None and int(count[0]) >= max_rules:
                    raise TooManyPushRulesError()
            enabled = True if existing is None else bool(existing[0])
            if relative is None:
                top = txn.query_one(
                    "SELECT MAX(priority) FROM push_rules WHERE user_id = ? AND kind = ?",
                    (user_id, kind),
                )
                priority = 0 if top is None or top[0] is None else int(top[0]) + 1
            else:
                anchor = _rule_priority(txn, user_id, kind, relative)
                if anchor is None:
                    raise RelativeRuleNotFoundError(relative)
                txn.execute(
                    "DELETE FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?",
                    (user_id, kind, rule_id),
                )
                # Open a gap next to the anchor: above it for before, below it for after.
                op = ">" if before is not None else ">="
                txn.execute(
                    f"UPDATE push_rules SET priority = priority + 1"
                    f" WHERE user_id = ? AND kind = ? AND priority {op} ?",
                    (user_id, kind, anchor),
                )
                priority = anchor + 1 if before is not None else anchor
            txn.execute(
                f"INSERT INTO push_rules (user_id, {_RULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (user_id, kind, rule_id, priority, conditions_json, pattern, actions_json, enabled),
            )
            return stream_id

        return await self._db.run("upsert_push_rule", _upsert)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> int:
        """Delete a user rule; :class:`PushRuleNotFoundError` if there is none."""

        def _delete(txn: Txn) -> int:
            stream_id = _bump(txn, user_id)
            txn.execute(
                "DELETE FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?",
                (user_id, kind, rule_id),
            )
            if txn.rowcount == 0:
                raise PushRuleNotFoundError()
            return stream_id

        return await self._db.run("delete_push_rule", _delete)

    async def set_rule_enabled(self, user_id: str, kind: str, rule_id: str, enabled: bool) -> int:
        return await self._update_rule(user_id, kind, rule_id, "enabled", enabled)

    async def set_rule_actions(self, user_id: str, kind: str, rule_id: str,
                               actions_json: str) -> int:
        return await self._update_rule(user_id, kind, rule_id, "actions", actions_json)

    async def _update_rule(self, user_id: str, kind: str, rule_id: str, column: str,
                           value: object) -> int:
        if column not in ("enabled", "actions"):
            raise ValueError(column)

        def _update(txn: Txn) -> int:
            stream_id = _bump(txn, user_id)
            txn.execute(
                f"UPDATE push_rules SET {column} = ?"
                " WHERE user_id = ? AND kind = ? AND rule_id = ?",
                (value, user_id, kind, rule_id),
            )
            if txn.rowcount == 0:
                raise PushRuleNotFoundError()
            return stream_id

        return await self._db.run(f"set_push_rule_{column}", _update)

    async def set_default_enabled(self, user_id: str, kind: str, rule_id: str,
                                  enabled: bool) -> int:
        """Record the user's enabled state of a server-default rule."""
        return await self._set_default(user_id, kind, rule_id, "enabled", enabled)

    async def set_default_actions(self, user_id: str, kind: str, rule_id: str,
                                  actions_json: str) -> int:
        """Record the user's actions for a server-default rule."""
        return await self._set_default(user_id, kind, rule_id, "actions", actions_json)

    async def _set_default(self, user_id: str, kind: str, rule_id: str, column: str,
                           value: object) -> int:
        if column not in ("enabled", "actions"):
            raise ValueError(column)

        def _set(txn: Txn) -> int:
            stream_id = _bump(txn, user_id)
            txn.execute(
                f"INSERT INTO push_rule_defaults (user_id, kind, rule_id, {column})"
                " VALUES (?, ?, ?, ?)"
                f" ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET {column} = excluded.{column}",
                (user_id, kind, rule_id, value),
            )
            return stream_id

        return await self._db.run(f"set_default_push_rule_{column}", _set)

    async def delete_all_for_user(self, user_id: str) -> None:
        """Forget every push rule change of a user (account erasure)."""

        def _delete(txn: Txn) -> None:
            for table in ("push_rules", "push_rule_defaults", "push_rules_changes"):
                txn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))

        await self._db.run("delete_user_push_rules", _delete)
