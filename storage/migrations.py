"""Versioned migrations from the ``schema`` package.

Files are ``NNNN_name.sql`` (both engines) with optional ``NNNN_name.sqlite.sql`` /
``NNNN_name.postgres.sql`` companions for dialect-specific statements, applied
after the common file, all in one transaction per version. A database whose
version is newer than the code refuses to start.

Migrating is logged as it goes (each migration with its position, duration and an
estimate of the time left; a statement running long is reported every few seconds
with its count), and a progress callback lets ``parley run`` show it on ``/ready``
while it already listens.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from storage.database import Database, Txn

logger = logging.getLogger(__name__)

#: Inside one migration, progress is logged at most this often (seconds).
STATEMENT_LOG_INTERVAL_S = 5.0
#: A migration taking longer than this (seconds) also logs when it is done.
LONG_MIGRATION_S = 1.0

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaTooNewError(Exception):
    """The database was migrated by a newer Parley than this one."""


@dataclass(frozen=True)
class MigrationProgress:
    """Where a migration run is: ``done`` of ``total`` pending migrations applied,
    ``current`` the one running (None once finished), ``eta_s`` None until one is done."""

    done: int
    total: int
    current: str | None
    elapsed_s: float
    eta_s: float | None


ProgressCallback = Callable[[MigrationProgress], None]


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


async def migrate(db: Database, now_ms: int,
                  progress: ProgressCallback | None = None) -> list[int]:
    """Apply every pending migration; return the versions applied. ``progress`` (called
    on the caller's thread) is told before and after each one."""
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
    applied: list[int] = []
    # Every migration not yet recorded is applied, in order (a version added between
    # two already-applied ones on a development database is not skipped).
    pending = [mig for mig in migrations if mig.version not in done]
    if pending:
        logger.info("database schema at version %d: %d migration(s) to apply, up to %d",
                    current, len(pending), code_version)
    started = time.monotonic()
    for index, mig in enumerate(pending):
        label = f"{mig.version:04d}_{mig.name}"
        _report(progress, index, len(pending), label, started)
        so_far = time.monotonic() - started
        logger.info("migration %s (%d/%d): %d statement(s)%s", label, index + 1,
                    len(pending), len(mig.statements),
                    f"; {so_far:.1f}s so far, about {so_far / index * (len(pending) - index):.0f}s"
                    " left" if index else "")

        def apply(txn: Txn, mig: Migration = mig, label: str = label) -> bool:
            # Re-check under the lock, so two starting processes do not race.
            if mig.version in _locked_applied_versions(txn):
                return False
            began = last_log = time.monotonic()
            for n, stmt in enumerate(mig.statements, 1):
                txn.execute(stmt)
                now = time.monotonic()
                if now - last_log >= STATEMENT_LOG_INTERVAL_S and n < len(mig.statements):
                    last_log = now
                    rate = (now - began) / n
                    logger.info("migration %s: %d/%d statements after %.0fs, about %.0fs "
                                "left", label, n, len(mig.statements), now - began,
                                rate * (len(mig.statements) - n))
            txn.execute(
                "INSERT INTO schema_version (version, name, applied_ts) VALUES (?, ?, ?)",
                (mig.version, mig.name, now_ms),
            )
            return True

        began = time.monotonic()
        if await db.run(f"migrate_{mig.version}", apply):
            applied.append(mig.version)
        took = time.monotonic() - began
        if took >= LONG_MIGRATION_S:
            logger.info("migration %s done in %.1fs (%d/%d)", label, took, index + 1,
                        len(pending))
    if pending:
        _report(progress, len(pending), len(pending), None, started)
        logger.info("database schema at version %d (%d migration(s) in %.1fs)",
                    code_version, len(applied), time.monotonic() - started)
    return applied


def _report(progress: ProgressCallback | None, done: int, total: int, current: str | None,
            started: float) -> None:
    if progress is None:
        return
    elapsed = time.monotonic() - started
    eta = elapsed / done * (total - done) if done else None
    progress(MigrationProgress(done, total, current, elapsed, eta))


async def check_schema(db: Database) -> None:
    """Refuse to run against a database that is behind or ahead of the code."""
    code_version = latest_version(db.engine.name)
    current = await current_version(db)
    if current > code_version:
        raise SchemaTooNewError(
            f"The database schema is at version {current}, newer than this Parley "
            f"(version {code_version}). Upgrade Parley before starting it."
        )
