"""Migrated PostgreSQL test schemas, emptied and reused within one trial process.

Migrating a fresh schema costs about 0.35 s of DDL per test (and leaves dead rows in the
system catalogs each time it is dropped); emptying the ~90 tables of a used one costs a few
milliseconds. A test that takes a pooled schema gets exactly what a fresh, migrated schema
holds: every table empty except the rows the migrations seed, every sequence restarted.

A schema goes back to the pool only if it still looks as migrated (same tables, same
``schema_version`` rows) and it could be emptied without waiting on a lock; otherwise it is
dropped, as before. Schemas left in the pool are dropped when the process exits.
``PARLEY_TEST_PG_POOL=0`` turns the pool off.
"""

from __future__ import annotations

import atexit
import os
import secrets
from dataclasses import dataclass
from typing import Any

_KEEP = frozenset({"schema_version"})  # written by the migrations runner, never by tests


@dataclass
class _Baseline:
    tables: frozenset[str]
    delete_order: list[str]  # children before parents (foreign keys)
    seeds: dict[str, tuple[list[str], list[tuple[Any, ...]]]]  # table -> (columns, rows)
    versions: frozenset[int]
    sequences: list[str]


_free: list[str] = []
_baseline: _Baseline | None = None
# PARLEY_TEST_PG_POOL=0: a new schema per test, dropped afterwards (as before the pool).
_ENABLED = os.environ.get("PARLEY_TEST_PG_POOL", "1") != "0"


def _connect() -> Any:
    import psycopg2

    from tests.harness import pg_settings

    s = pg_settings()
    return psycopg2.connect(host=s["host"], port=s["port"], user=s["user"],
                            dbname=s["database"], password=s.get("password"),
                            connect_timeout=5)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tables(cur: Any, schema: str) -> frozenset[str]:
    cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
    return frozenset(r[0] for r in cur.fetchall())


def _versions(cur: Any, schema: str) -> frozenset[int]:
    cur.execute(f"SELECT version FROM {_q(schema)}.schema_version")
    return frozenset(int(r[0]) for r in cur.fetchall())


def _delete_order(cur: Any, schema: str, tables: frozenset[str]) -> list[str]:
    """Tables ordered so that a table is emptied before any table it references."""
    cur.execute(
        "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c"
        " JOIN pg_namespace n ON n.oid = c.connamespace"
        " WHERE c.contype = 'f' AND n.nspname = %s", (schema,))
    refs: dict[str, set[str]] = {t: set() for t in tables}  # parent -> children
    for child, parent in cur.fetchall():
        child, parent = child.split(".")[-1].strip('"'), parent.split(".")[-1].strip('"')
        if child != parent and parent in refs:
            refs[parent].add(child)
    order: list[str] = []
    done: set[str] = set()

    def visit(table: str, path: frozenset[str]) -> None:
        if table in done:
            return
        if table in path:
            return  # a cycle: the DELETE fails and release() drops the schema instead
        for child in sorted(refs.get(table, ())):
            visit(child, path | {table})
        done.add(table)
        order.append(table)

    for table in sorted(tables):
        visit(table, frozenset())
    return order


def capture(schema: str) -> None:
    """Record what a freshly migrated schema holds (once per process)."""
    global _baseline
    if _baseline is not None:
        return
    conn = _connect()
    try:
        with conn.cursor() as cur:
            tables = _tables(cur, schema)
            seeds: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
            for table in sorted(tables - _KEEP):
                cur.execute(f"SELECT * FROM {_q(schema)}.{_q(table)}")
                rows = cur.fetchall()
                if rows:
                    seeds[table] = ([d[0] for d in cur.description], rows)
            cur.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = %s",
                        (schema,))
            sequences = sorted(r[0] for r in cur.fetchall())
            _baseline = _Baseline(tables, _delete_order(cur, schema, tables), seeds,
                                  _versions(cur, schema), sequences)
        conn.rollback()
    finally:
        conn.close()


def acquire() -> tuple[str, bool]:
    """A schema name, and whether it is already migrated (taken from the pool)."""
    if _free:
        return _free.pop(), True
    return _new_name(), False


def _new_name() -> str:
    return "t_" + secrets.token_hex(8)


def _reset(cur: Any, schema: str, base: _Baseline) -> str | None:
    """Empty ``schema`` to its migrated state and rename it; the new name, or None if it
    is not reusable. The rename fences off stragglers: a connection of the finished test
    still open (its search_path names the old schema) fails instead of writing into the
    next test's data."""
    if _tables(cur, schema) != base.tables or _versions(cur, schema) != base.versions:
        return None
    # A straggling transaction of the finished test on these tables is ended first.
    cur.execute(
        "SELECT DISTINCT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND l.pid <> pg_backend_pid()", (schema,))
    for (pid,) in cur.fetchall():
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    cur.execute("SET LOCAL lock_timeout = '2s'")
    cur.execute("SET LOCAL statement_timeout = '20s'")
    for table in base.delete_order:
        if table not in _KEEP:
            cur.execute(f"DELETE FROM {_q(schema)}.{_q(table)}")
    for table, (columns, rows) in base.seeds.items():
        cols = ", ".join(_q(c) for c in columns)
        marks = ", ".join(["%s"] * len(columns))
        cur.executemany(f"INSERT INTO {_q(schema)}.{_q(table)} ({cols}) VALUES ({marks})",
                        rows)
    for seq in base.sequences:
        cur.execute(f"ALTER SEQUENCE {_q(schema)}.{_q(seq)} RESTART")
    renamed = _new_name()
    cur.execute(f"ALTER SCHEMA {_q(schema)} RENAME TO {_q(renamed)}")
    return renamed


def release(schema: str) -> None:
    """Empty the schema and keep it for the next test, or drop it."""
    from tests.harness import drop_pg_schema

    base = _baseline
    if base is not None and _ENABLED:
        try:
            conn = _connect()
        except Exception:  # noqa: BLE001 (the drop below reports a real problem)
            conn = None
        if conn is not None:
            try:
                with conn.cursor() as cur:
                    kept = _reset(cur, schema, base)
                if kept is not None:
                    conn.commit()
                    _free.append(kept)
                    return
                conn.rollback()
            except Exception:  # noqa: BLE001 (not reusable: drop it)
                conn.rollback()
            finally:
                conn.close()
    drop_pg_schema(schema)


@atexit.register
def _drop_pooled() -> None:
    from tests.harness import drop_pg_schema

    while _free:
        try:
            drop_pg_schema(_free.pop())
        except Exception:  # noqa: BLE001, S110 (exiting: nothing to report to)
            pass
