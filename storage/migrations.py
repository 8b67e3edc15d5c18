"""Versioned migrations from the ``schema`` package.

Files are ``NNNN_name.sql`` (both engines) with optional ``NNNN_name.sqlite.sql`` /
``NNNN_name.postgres.sql`` companions for dialect-specific statements, applied
after the common file, all in one transaction per version. A database whose
version is newer than the code refuses to start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from storage.database import Database, Txn

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaTooNewError(Exception):
    """The database was migrated by a newer Parley than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: list[str]


def split_statements(sql: str) -> list[str]:
    """Split on ``;`` at line ends, dropping ``--`` comment lines."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [p.strip() for p in parts if p.strip()]


def load_migrations(engine_name: str) -> list[Migration]:
    pkg = resources.files("schema")
    found = []
    for entry in pkg.iterdir():
        m = _FILE.match(entry.name)
        if not m:
            continue
        version, name = int(m.group(1)), m.group(2)
        stmts = split_statements(entry.read_text())
        companion = pkg / f"{m.group(1)}_{name}.{engine_name}.sql"
        if companion.is_file():
            stmts += split_statements(companion.read_text())
        found.append(Migration(version, name, stmts))
    found.sort(key=lambda mi: mi.version)
    versions = [mi.version for mi in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError("duplicate migration versions in schema/")
    return found


def latest_version(engine_name: str) -> int:
    migrations = load_migrations(engine_name)
    return migrations[-1].version if migrations else 0


def _lock(txn: Txn) -> None:
    """Start the transaction holding the migration lock (PostgreSQL: an advisory lock;
    SQLite: BEGIN IMMEDIATE, which also makes its DDL transactional)."""
    lock = txn.engine.migration_lock_sql()
    if lock:
        txn.execute(lock)


def _locked_applied_versions(txn: Txn) -> set[int]:
    _lock(txn)
    return _applied_versions(txn)


def _applied_versions(txn: Txn) -> set[int]:
    txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER NOT NULL, name TEXT NOT NULL, applied_ts BIGINT NOT NULL)"
    )
    return {int(r[0]) for r in txn.query("SELECT version FROM schema_version")}


def _current_version(txn: Txn) -> int:
    return max(_locked_applied_versions(txn), default=0)


async def current_version(db: Database) -> int:
    return await db.run("schema_version", _current_version)


async def migrate(db: Database, now_ms: int) -> list[int]:
    """Apply every pending migration; return the versions applied."""
    migrations = load_migrations(db.engine.name)
    code_version = migrations[-1].version if migrations else 0
    current = await current_version(db)
    if current > code_version:
        raise SchemaTooNewError(
            f"The database schema is at version {current}, but this Parley only knows "
            f"versions up to {code_version}. Upgrade Parley (or restore a backup) before "
            f"starting it against this database."
        )
    done = await db.run("applied_versions", _locked_applied_versions)
    applied = []
    # Every migration not yet recorded is applied, in order (a version added between
    # two already-applied ones on a development database is not skipped).
    for mig in migrations:
        if mig.version in done:
            continue

        def apply(txn: Txn, mig: Migration = mig) -> bool:
            # Re-check under the lock, so two starting processes do not race.
            if mig.version in _locked_applied_versions(txn):
                return False
            for stmt in mig.statements:
                txn.execute(stmt)
            txn.execute(
                "INSERT INTO schema_version (version, name, applied_ts) VALUES (?, ?, ?)",
                (mig.version, mig.name, now_ms),
            )
            return True

        if await db.run(f"migrate_{mig.version}", apply):
            applied.append(mig.version)
    return applied


async def check_schema(db: Database) -> None:
    """Refuse to run against a database that is behind or ahead of the code."""
    code_version = latest_version(db.engine.name)
    current = await current_version(db)
    if current > code_version:
        raise SchemaTooNewError(
            f"The database schema is at version {current}, newer than this Parley "
            f"(version {code_version}). Upgrade Parley before starting it."
        )
