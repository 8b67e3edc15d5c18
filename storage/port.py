"""Copying a Parley SQLite database into PostgreSQL (``parley port-db``).

The source must be at the code's schema version; the target is migrated by the normal
migrations, then every table is copied in primary-key order, in batches, each batch
committed together with the table's progress in ``port_db_progress`` (created in the
target by the port itself, not by a migration, and dropped once the port has verified).
So an interrupted port resumes exactly after the last committed batch. A non-empty target
is refused unless ``force``: then every Parley table in it is emptied (one transaction)
and the port runs as a fresh one. Afterwards every PostgreSQL sequence is advanced past
what was copied: the stream sequences (``<stream>_stream_seq``) to SQLite's
``stream_positions``, the SERIAL ones to their column's maximum, so new writes never
reuse a position; then they are verified (next value above every copied position and,
for a stream, equal to SQLite's next one) together with the row counts.

All SQL of the port is here; ``homeserver/cli_port_db.py`` is the command around it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from storage.database import Database, Txn
from storage.migrations import current_version, load_migrations, migrate

logger = logging.getLogger(__name__)

#: The target's progress table (one row per table being or already copied).
PROGRESS_TABLE = "port_db_progress"
#: Never copied: each side has its own record of the migrations applied.
SKIPPED = frozenset({"schema_version"})
#: SQLite's own bookkeeping that PostgreSQL keeps elsewhere: stream counters (PostgreSQL
#: uses sequences, advanced from these rows at the end).
SQLITE_ONLY = frozenset({"stream_positions"})
DEFAULT_BATCH = 5000
MAX_BATCH = 100_000
#: Rows per INSERT statement (a batch is several statements in one transaction).
INSERT_CHUNK = 500
#: Progress is logged at most this often per table (seconds), and when a table is done.
LOG_INTERVAL_S = 5.0

#: Where each stream's positions are written when issued: (table, column, sign); sign -1
#: is a stream stored negated (backfilled events take ``-next_stream_id``). The copied
#: maximum must be below the PostgreSQL sequence's next value.
STREAM_COLUMNS: dict[str, list[tuple[str, str, int]]] = {
    "events": [("events", "stream_ordering", 1)],
    "events_backfill": [("events", "stream_ordering", -1)],
    "state_groups": [("state_groups", "id", 1)],
    "account_data": [("account_data", "stream_id", 1), ("push_rules_changes", "stream_id", 1)],
    "receipts": [("receipts", "stream_id", 1)],
    "presence": [("presence", "stream_id", 1)],
    "content_reports": [("content_reports", "id", 1)],
    "device_lists": [("device_lists_stream", "stream_id", 1)],
    "to_device": [("device_inbox", "stream_id", 1)],
}
#: How long emptying the target (``force``) waits for a table lock before giving up.
FORCE_LOCK_TIMEOUT_MS = 10_000

_STREAM_SEQ = re.compile(r"^([a-z_]+)_stream_seq$")
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)


class PortError(Exception):
    """A reason the port cannot run or did not finish; the message is for the operator."""


@dataclass
class TablePlan:
    """One table to copy: its columns, the key it is read in order of, and its size."""

    name: str
    columns: list[str]
    key: list[str]  # primary key columns, or ["rowid"] for a table without one
    converters: list[Callable[[Any], Any]] = field(default_factory=list)
    total: int = 0


@dataclass
class SequenceCheck:
    """One PostgreSQL sequence after the port: SQLite's position for a stream (None for a
    SERIAL column's sequence), the largest copied position, and the next value PostgreSQL
    will hand out."""

    sequence: str
    stream: str | None
    sqlite_pos: int | None
    max_copied: int | None
    pg_next: int
    ok: bool


@dataclass
class PortReport:
    """What the port did: per-table counts (source, target), sequences set and checked,
    problems."""

    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    checks: list[SequenceCheck] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    nul_stripped: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def _q(name: str) -> str:
    """A quoted identifier (names come from the databases' catalogs, never from input)."""
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------
# The source (SQLite)
# ---------------------------------------------------------------------------------------


def _source_versions(txn: Txn) -> set[int] | None:
    """The migrations applied to the source; None if it is not a Parley database."""
    if not txn.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                     ("schema_version",)):
        return None
    return {int(r[0]) for r in txn.query("SELECT version FROM schema_version")}


def _source_tables(txn: Txn) -> list[str]:
    rows = txn.query("SELECT name FROM sqlite_master WHERE type = 'table' "
                     "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")
    return [str(r[0]) for r in rows]


def _source_columns(txn: Txn, table: str) -> tuple[list[str], list[str]]:
    """(columns in order, the key to read the table in order of)."""
    info = txn.query(f"PRAGMA table_info({_q(table)})")
    columns = [str(r[1]) for r in info]
    pk = [str(r[1]) for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    return columns, (pk or ["rowid"])


def _count(txn: Txn, table: str) -> int:
    row = txn.query_one(f"SELECT COUNT(*) FROM {_q(table)}")
    return int(row[0]) if row else 0


def _read_batch(txn: Txn, plan: TablePlan, after: list[Any] | None,
                limit: int) -> list[tuple[Any, ...]]:
    """The next ``limit`` rows after key ``after``: each row is its key values, then the
    columns (keyset pagination, so every batch is an index range scan)."""
    keys = ", ".join(_q(k) if k != "rowid" else "rowid" for k in plan.key)
    cols = ", ".join(_q(c) for c in plan.columns)
    sql = f"SELECT {keys}, {cols} FROM {_q(plan.name)}"
    args: list[Any] = []
    if after is not None:
        sql += f" WHERE ({keys}) > ({', '.join('?' for _ in plan.key)})"
        args += after
    sql += f" ORDER BY {keys} LIMIT ?"
    args.append(limit)
    return [tuple(r) for r in txn.query(sql, args)]


def _stream_positions(txn: Txn) -> dict[str, int]:
    return {str(r[0]): int(r[1]) for r in txn.query("SELECT stream, pos FROM stream_positions")}


def _sqlite_sequences(txn: Txn) -> dict[str, int]:
    """AUTOINCREMENT high-water marks (above the maximum id if the top rows were deleted)."""
    if not txn.query("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"):
        return {}
    return {str(r[0]): int(r[1]) for r in txn.query("SELECT name, seq FROM sqlite_sequence")}


# ---------------------------------------------------------------------------------------
# The target (PostgreSQL)
# ---------------------------------------------------------------------------------------


def _target_tables(txn: Txn) -> list[str]:
    rows = txn.query("SELECT table_name FROM information_schema.tables "
                     "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' "
                     "ORDER BY table_name")
    return [str(r[0]) for r in rows]


def _target_column_types(txn: Txn) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for table, column, data_type in txn.query(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema()"):
        out.setdefault(str(table), {})[str(column)] = str(data_type)
    return out


def _foreign_keys(txn: Txn) -> list[tuple[str, str]]:
    """(child, parent) pairs: a parent is copied before its children."""
    rows = txn.query(
        "SELECT cl.relname, ref.relname FROM pg_constraint c "
        "JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_class ref ON ref.oid = c.confrelid "
        "WHERE c.contype = 'f' AND c.connamespace = "
        "(SELECT oid FROM pg_namespace WHERE nspname = current_schema())")
    return [(str(a), str(b)) for a, b in rows]


def _has_rows(txn: Txn, table: str) -> bool:
    return bool(txn.query(f"SELECT 1 FROM {_q(table)} LIMIT 1"))


def _create_progress(txn: Txn) -> None:
    txn.execute(f"CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} ("
                "table_name TEXT PRIMARY KEY, last_key TEXT, rows_copied BIGINT NOT NULL, "
                "done BOOLEAN NOT NULL, updated_ts BIGINT NOT NULL)")


def _read_progress(txn: Txn) -> dict[str, tuple[list[Any] | None, int, bool]]:
    rows = txn.query(f"SELECT table_name, last_key, rows_copied, done FROM {PROGRESS_TABLE}")
    return {str(t): (json.loads(k) if k is not None else None, int(n), bool(d))
            for t, k, n, d in rows}


def _start_table(txn: Txn, table: str, now_ms: int) -> None:
    """First batch of a table: clear what the migrations seeded, record the start."""
    txn.execute(f"DELETE FROM {_q(table)}")
    txn.execute(f"INSERT INTO {PROGRESS_TABLE} (table_name, last_key, rows_copied, done, "
                "updated_ts) VALUES (?, NULL, 0, FALSE, ?)", (table, now_ms))


def _write_batch(txn: Txn, plan: TablePlan, rows: list[tuple[Any, ...]], last_key: list[Any],
                 copied: int, done: bool, now_ms: int) -> None:
    """Insert converted rows and move the table's progress, in one transaction."""
    if rows:
        cols = ", ".join(_q(c) for c in plan.columns)
        one = "(" + ", ".join("?" for _ in plan.columns) + ")"
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start:start + INSERT_CHUNK]
            args = [v for row in chunk for v in row]
            txn.execute(f"INSERT INTO {_q(plan.name)} ({cols}) VALUES "
                        + ", ".join(one for _ in chunk), args)
    txn.execute(f"UPDATE {PROGRESS_TABLE} SET last_key = ?, rows_copied = ?, done = ?, "
                "updated_ts = ? WHERE table_name = ?",
                (json.dumps(last_key), copied, done, now_ms, plan.name))


def _mark_done(txn: Txn, table: str, now_ms: int) -> None:
    txn.execute(f"UPDATE {PROGRESS_TABLE} SET done = TRUE, updated_ts = ? "
                "WHERE table_name = ?", (now_ms, table))


def _sequences(txn: Txn) -> list[tuple[str, str | None, str | None]]:
    """Every sequence of the schema: (name, owning table, owning column) — the owner is
    set for SERIAL columns."""
    rows = txn.query(
        "SELECT s.relname, t.relname, a.attname FROM pg_class s "
        "LEFT JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass "
        "AND d.deptype IN ('a', 'i') "
        "LEFT JOIN pg_class t ON t.oid = d.refobjid "
        "LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid "
        "WHERE s.relkind = 'S' AND s.relnamespace = "
        "(SELECT oid FROM pg_namespace WHERE nspname = current_schema()) ORDER BY s.relname")
    return [(str(s), t and str(t), c and str(c)) for s, t, c in rows]


def _column_max(txn: Txn, table: str, column: str) -> int:
    row = txn.query_one(f"SELECT MAX({_q(column)}) FROM {_q(table)}")
    return int(row[0]) if row and row[0] is not None else 0


def _sequence_state(txn: Txn, seq: str) -> tuple[int, bool]:
    row = txn.query_one(f"SELECT last_value, is_called FROM {_q(seq)}")
    assert row is not None
    return int(row[0]), bool(row[1])


def _set_sequence(txn: Txn, seq: str, value: int) -> None:
    """The next ``nextval`` returns ``value + 1``."""
    txn.execute("SELECT setval(?, ?, TRUE)", (_q(seq), value))


def _analyze(txn: Txn, tables: list[str]) -> None:
    for t in tables:  # fresh planner statistics for the copied tables
        txn.execute(f"ANALYZE {_q(t)}")


def _drop_progress(txn: Txn) -> None:
    txn.execute(f"DROP TABLE IF EXISTS {PROGRESS_TABLE}")


def _empty_target(txn: Txn, tables: list[str], stream_seqs: list[str]) -> None:
    """``force``: every Parley table emptied, the SERIAL and stream sequences back at
    their start, an interrupted port's progress gone; all or nothing (one transaction).
    A lock wait is bounded: a server still running on the database fails it quickly."""
    txn.execute(f"SET LOCAL lock_timeout = {int(FORCE_LOCK_TIMEOUT_MS)}")
    if tables:
        txn.execute(f"TRUNCATE {', '.join(_q(t) for t in tables)} RESTART IDENTITY")
    for seq in stream_seqs:
        txn.execute(f"ALTER SEQUENCE {_q(seq)} RESTART")
    txn.execute(f"DROP TABLE IF EXISTS {PROGRESS_TABLE}")


def _stream_max(txn: Txn, table: str, column: str, sign: int) -> int:
    """The largest position of a stream held in ``table.column`` (0 if none)."""
    if sign < 0:
        sql = f"SELECT -MIN({_q(column)}) FROM {_q(table)} WHERE {_q(column)} < 0"
    else:
        sql = f"SELECT MAX({_q(column)}) FROM {_q(table)} WHERE {_q(column)} > 0"
    row = txn.query_one(sql)
    return int(row[0]) if row and row[0] is not None else 0


def _next_value(last: int, called: bool) -> int:
    """What ``nextval`` returns next for a sequence in this state (increment 1)."""
    return last + 1 if called else last


# ---------------------------------------------------------------------------------------
# Conversions (SQLite's dynamic types to the PostgreSQL column's type)
# ---------------------------------------------------------------------------------------


def _to_bool(v: Any) -> Any:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str):
        return v.strip().lower() in ("1", "t", "true", "yes")
    return bool(v)


def _to_int(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _to_bytes(v: Any) -> Any:
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, memoryview | bytearray):
        return bytes(v)
    return v


class _TextConverter:
    """Text: bytes decoded as UTF-8; NUL characters (which PostgreSQL text cannot hold)
    removed and counted, as Synapse's port does."""

    def __init__(self) -> None:
        self.stripped = 0

    def __call__(self, v: Any) -> Any:
        if isinstance(v, bytes | bytearray | memoryview):
            v = bytes(v).decode("utf-8", errors="replace")
        if isinstance(v, str) and "\x00" in v:
            self.stripped += 1
            return v.replace("\x00", "")
        return v


def _converter(data_type: str) -> Callable[[Any], Any]:
    if data_type == "boolean":
        return _to_bool
    if data_type in ("smallint", "integer", "bigint"):
        return _to_int
    if data_type == "bytea":
        return _to_bytes
    if data_type in ("text", "character varying", "character", "json", "jsonb"):
        return _TextConverter()
    return lambda v: v


# ---------------------------------------------------------------------------------------
# The port
# ---------------------------------------------------------------------------------------


def _check_source_version(applied: set[int] | None) -> None:
    code = {m.version for m in load_migrations("sqlite")}
    if applied is None:
        raise PortError("the SQLite file is not a Parley database (it has no schema_version "
                        "table)")
    have, want = max(applied, default=0), max(code, default=0)
    if have > want or applied - code:
        raise PortError(f"the SQLite database is at schema version {have}, newer than this "
                        f"Parley (version {want}): port it with the Parley version that "
                        "last ran it")
    if code - applied:
        missing = sorted(code - applied)
        raise PortError(f"the SQLite database is at schema version {have} but this Parley is "
                        f"at version {want} (missing: {', '.join(map(str, missing[:10]))}"
                        f"{' ...' if len(missing) > 10 else ''}): run `parley migrate -c "
                        "<the old server's config>` with this Parley version on it first, "
                        "then port again")


def _seeded_tables() -> set[str]:
    """Tables the PostgreSQL migrations put rows in (an empty target still has these)."""
    out = set()
    for mig in load_migrations("postgres"):
        for stmt in mig.statements:
            if m := _INSERT.match(stmt):
                out.add(m.group(1).lower())
    return out


def _copy_order(tables: list[str], fks: list[tuple[str, str]]) -> list[str]:
    """Parents before children (Kahn's algorithm, alphabetical among equals)."""
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in fks:
        if child in parents and parent in parents and child != parent:
            parents[child].add(parent)
    order: list[str] = []
    while parents:
        ready = sorted(t for t, ps in parents.items() if not ps)
        if not ready:  # a cycle: copy the rest alphabetically (none exist today)
            ready = sorted(parents)
        for t in ready:
            order.append(t)
            del parents[t]
        for ps in parents.values():
            ps.difference_update(ready)
    return order


async def _prepare_target(target: Database, parley_tables: set[str], resume: bool,
                          force: bool, now_ms: int) -> tuple[bool, list[str]]:
    """Migrate the target if it is empty (or emptied: ``force``), or check it holds an
    interrupted port; returns (resuming, the tables emptied)."""
    if resume and force:
        raise PortError("--force starts the port again from an emptied database; --resume "
                        "continues an interrupted one: pass one of them")
    tables = set(await target.run("port_target_tables", _target_tables))
    has_progress = PROGRESS_TABLE in tables
    tables.discard(PROGRESS_TABLE)
    busy: list[str] = []
    if tables and not (has_progress and resume):
        seeded = _seeded_tables() | SKIPPED
        busy = [t for t in sorted(tables - seeded)
                if await target.run("port_has_rows", _has_rows, t)]
    if has_progress and not resume and not force:
        raise PortError("the PostgreSQL database holds an interrupted port (table "
                        f"{PROGRESS_TABLE}): pass --resume to continue it, or --force to "
                        "empty the database and start again")
    if busy and not force:
        shown = ", ".join(busy[:5]) + (" ..." if len(busy) > 5 else "")
        raise PortError(f"the PostgreSQL database is not empty (rows in {shown}): port "
                        "into an empty database (or schema), or pass --force to empty it "
                        "first; --resume only continues an interrupted port")
    if force and (busy or has_progress):
        code = max((m.version for m in load_migrations("postgres")), default=0)
        if await current_version(target) > code:
            raise PortError("the PostgreSQL database is at a newer schema version than this "
                            "Parley: it is not emptied")
        empty = sorted(tables & parley_tables)
        seqs = [s for s, t, _ in await target.run("port_sequences", _sequences)
                if t is None and _STREAM_SEQ.match(s)]
        shown = ", ".join(busy[:5]) + (" ..." if len(busy) > 5 else "")
        logger.warning("--force: EMPTYING the PostgreSQL database before the port: every row "
                       "of its %d Parley tables is DELETED (rows were in %s%s), its sequences "
                       "restarted", len(empty), shown or "-",
                       "; an interrupted port is discarded" if has_progress else "")
        import psycopg2

        try:
            await target.run("port_empty_target", _empty_target, empty, seqs)
        except psycopg2.Error as e:  # a lock timeout, a foreign key from a non-Parley table
            raise PortError("emptying the PostgreSQL database failed, nothing was deleted ("
                            f"{str(e).strip().splitlines()[0]}): is a server still running "
                            "on it?") from e
        await migrate(target, now_ms)
        return False, empty
    await migrate(target, now_ms)  # brings an empty target to the code's schema
    return has_progress, []


async def _plan(source: Database, target: Database) -> list[TablePlan]:
    src = [t for t in await source.run("port_source_tables", _source_tables)
           if t not in SKIPPED and t not in SQLITE_ONLY]
    dst = [t for t in await target.run("port_target_tables", _target_tables)
           if t not in SKIPPED and t != PROGRESS_TABLE]
    only_src, only_dst = sorted(set(src) - set(dst)), sorted(set(dst) - set(src))
    if only_src or only_dst:
        raise PortError("the databases' tables differ (same schema version expected): "
                        f"only in SQLite: {', '.join(only_src) or '-'}; only in PostgreSQL: "
                        f"{', '.join(only_dst) or '-'}")
    types = await target.run("port_column_types", _target_column_types)
    order = _copy_order(src, await target.run("port_foreign_keys", _foreign_keys))
    plans = []
    for table in order:
        columns, key = await source.run("port_source_columns", _source_columns, table)
        if set(columns) != set(types[table]):
            raise PortError(f"table {table}: columns differ (SQLite: {', '.join(sorted(columns))};"
                            f" PostgreSQL: {', '.join(sorted(types[table]))})")
        plan = TablePlan(table, columns, key, [_converter(types[table][c]) for c in columns])
        plan.total = await source.run("port_count", _count, table)
        plans.append(plan)
    return plans


@dataclass
class _Overall:
    """Rows copied across tables (for the overall ETA in the progress lines)."""

    total: int
    copied: int = 0
    started: float = field(default_factory=time.monotonic)

    def eta(self) -> str:
        elapsed = time.monotonic() - self.started
        if not self.copied or elapsed <= 0:
            return "?"
        return f"{max(self.total - self.copied, 0) / (self.copied / elapsed):.0f}s"


async def _copy_table(source: Database, target: Database, plan: TablePlan,
                      progress: tuple[list[Any] | None, int, bool] | None, batch: int,
                      clock_ms: Callable[[], int], overall: _Overall) -> None:
    if progress is None:
        await target.run("port_start_table", _start_table, plan.name, clock_ms())
        after, copied = None, 0
    else:
        after, copied = progress[0], progress[1]
        logger.info("%s: resuming after %d of %d rows", plan.name, copied, plan.total)
        overall.copied += copied
    started, last_log, start_copied = time.monotonic(), time.monotonic(), copied
    nk = len(plan.key)
    while True:
        rows = await source.run("port_read", _read_batch, plan, after, batch)
        done = len(rows) < batch
        converted = [tuple(conv(v) for conv, v in zip(plan.converters, r[nk:], strict=True))
                     for r in rows]
        if rows:
            after = list(rows[-1][:nk])
        copied += len(rows)
        overall.copied += len(rows)
        await target.run("port_write", _write_batch, plan, converted, after, copied, done,
                         clock_ms())
        now = time.monotonic()
        if done:
            if copied:
                logger.info("%s: done, %d rows in %.1fs", plan.name, copied, now - started)
            return
        if now - last_log >= LOG_INTERVAL_S:
            last_log = now
            rate = (copied - start_copied) / max(now - started, 1e-6)
            left = max(plan.total - copied, 0)
            logger.info("%s: %d/%d rows (%.0f%%), %.0f rows/s, table ETA %.0fs; all tables "
                        "%.0f%%, ETA %s", plan.name, copied, plan.total,
                        100.0 * copied / max(plan.total, 1), rate, left / max(rate, 1e-6),
                        100.0 * overall.copied / max(overall.total, 1), overall.eta())


async def _stream_maxima(target: Database, streams: set[str]) -> dict[str, int]:
    """The largest copied position of each known stream (read from the target)."""
    out = {}
    for stream in sorted(streams):
        if stream in STREAM_COLUMNS:
            out[stream] = max([await target.run("port_stream_max", _stream_max, t, c, sign)
                               for t, c, sign in STREAM_COLUMNS[stream]], default=0)
    return out


async def _advance_sequences(source: Database, target: Database, report: PortReport,
                             positions: dict[str, int], maxima: dict[str, int]) -> None:
    """Every sequence past what was copied: a stream's to SQLite's position (or to its
    largest copied position if SQLite's record is behind it), a SERIAL one to its
    column's maximum (or SQLite's AUTOINCREMENT mark)."""
    autoinc = await source.run("port_sqlite_sequence", _sqlite_sequences)
    seen_streams = set()
    for seq, table, column in await target.run("port_sequences", _sequences):
        m = _STREAM_SEQ.match(seq)
        if table and column:
            value = max(await target.run("port_max", _column_max, table, column),
                        autoinc.get(table, 0))
        elif m and m.group(1) in positions:
            stream = m.group(1)
            value = positions[stream]
            seen_streams.add(stream)
            if maxima.get(stream, 0) > value:
                logger.warning("stream %s: SQLite recorded position %d but holds rows up to "
                               "%d; PostgreSQL continues after %d", stream, value,
                               maxima[stream], maxima[stream])
                value = maxima[stream]
        else:
            report.problems.append(f"sequence {seq}: no SQLite stream or column to take its "
                                   "position from")
            continue
        last, called = await target.run("port_seq_state", _sequence_state, seq)
        value = max(value, last if called else last - 1)
        if value >= 1:
            await target.run("port_setval", _set_sequence, seq, value)
        report.sequences[seq] = value
    for stream in sorted(set(positions) - seen_streams):
        report.problems.append(f"stream {stream}: no PostgreSQL sequence {stream}_stream_seq")


async def _verify_sequences(source: Database, target: Database, report: PortReport,
                            positions: dict[str, int], maxima: dict[str, int]) -> None:
    """Read back every sequence: its next value must be above every copied position
    and, for a stream, be SQLite's next one (position + 1) unless SQLite's record was
    behind its own rows."""
    autoinc = await source.run("port_sqlite_sequence", _sqlite_sequences)
    for seq, table, column in await target.run("port_sequences", _sequences):
        last, called = await target.run("port_seq_state", _sequence_state, seq)
        nxt = _next_value(last, called)
        m = _STREAM_SEQ.match(seq)
        if table and column:
            top = max(await target.run("port_max", _column_max, table, column),
                      autoinc.get(table, 0))
            check = SequenceCheck(seq, None, None, top, nxt, nxt > top)
            if not check.ok:
                report.problems.append(f"sequence {seq}: next value {nxt} is not above "
                                       f"{table}.{column}'s maximum {top}")
        elif m and m.group(1) in positions:
            stream = m.group(1)
            pos, top = positions[stream], maxima.get(stream)
            want = max(pos, top or 0) + 1
            check = SequenceCheck(seq, stream, pos, top, nxt, nxt == want)
            if not check.ok:
                report.problems.append(
                    f"stream {stream}: PostgreSQL's next position is {nxt}, expected {want} "
                    f"(SQLite's position {pos}, largest copied "
                    f"{'-' if top is None else top})")
        else:
            continue  # reported by _advance_sequences
        report.checks.append(check)


async def port_database(source: Database, target: Database, *, resume: bool = False,
                        force: bool = False, batch: int = DEFAULT_BATCH,
                        clock_ms: Callable[[], int] | None = None) -> PortReport:
    """Copy ``source`` (SQLite) into ``target`` (PostgreSQL); raises :class:`PortError`
    when it cannot start, returns a report (``ok`` False on a count or sequence problem).
    ``force`` empties a non-empty target first (every Parley table); never with ``resume``."""
    if source.engine.name != "sqlite" or target.engine.name != "postgres":
        raise PortError("port-db copies a SQLite database into PostgreSQL")
    if not 1 <= batch <= MAX_BATCH:
        raise PortError(f"batch size must be between 1 and {MAX_BATCH}")
    ms = clock_ms or (lambda: int(time.time() * 1000))
    began = time.monotonic()
    _check_source_version(await source.run("port_source_versions", _source_versions))
    parley_tables = {t for t in await source.run("port_source_tables", _source_tables)
                     if t not in SKIPPED and t not in SQLITE_ONLY}
    resuming, emptied = await _prepare_target(target, parley_tables, resume, force, ms())
    plans = await _plan(source, target)
    await target.run("port_create_progress", _create_progress)
    progress = await target.run("port_read_progress", _read_progress) if resuming else {}
    total = sum(p.total for p in plans)
    logger.info("porting %d tables, %d rows%s", len(plans), total,
                " (resuming)" if resuming else "")
    overall = _Overall(total)
    for i, plan in enumerate(plans, 1):
        state = progress.get(plan.name)
        if state is not None and state[2]:
            logger.info("table %d/%d: %s: already copied (%d rows)", i, len(plans), plan.name,
                        state[1])
            overall.copied += state[1]
            continue
        logger.info("table %d/%d: %s: %s", i, len(plans), plan.name,
                    f"{plan.total} rows" if plan.total else "empty")
        await _copy_table(source, target, plan, state, batch, ms, overall)
    report = PortReport()
    for plan in plans:
        stripped = sum(getattr(c, "stripped", 0) for c in plan.converters)
        if stripped:
            report.nul_stripped[plan.name] = stripped
            logger.warning("%s: removed NUL characters from %d values (PostgreSQL text "
                           "cannot hold them)", plan.name, stripped)
    report.emptied = emptied
    positions = await source.run("port_stream_positions", _stream_positions)
    maxima = await _stream_maxima(target, set(positions))
    await _advance_sequences(source, target, report, positions, maxima)
    await _verify_sequences(source, target, report, positions, maxima)
    for plan in plans:  # verify
        src_n = await source.run("port_count", _count, plan.name)
        dst_n = await target.run("port_count", _count, plan.name)
        report.counts[plan.name] = (src_n, dst_n)
        if src_n != dst_n:
            report.problems.append(f"table {plan.name}: {src_n} rows in SQLite, {dst_n} in "
                                   "PostgreSQL")
    await target.run("port_analyze", _analyze, [p.name for p in plans])
    if report.ok:
        await target.run("port_drop_progress", _drop_progress)
    report.elapsed_s = time.monotonic() - began
    return report
