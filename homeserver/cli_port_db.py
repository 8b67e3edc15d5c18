"""``parley port-db``: move a SQLite deployment's database into PostgreSQL.

    parley port-db --sqlite PATH -c CONFIG [--resume | --force] [--batch N]
    parley port-db --from OLD_CONFIG --to CONFIG [--resume | --force] [--batch N]

CONFIG's ``database`` names the PostgreSQL target; the source is the SQLite file (given
directly, or as the old config whose ``database.path`` names it). Stop the server first.
The copy itself is :func:`storage.port.port_database`; :func:`run_port_db` is the async
entry tests call. Registered in homeserver/cli.py by :func:`add_port_db_parser`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, TextIO

from homeserver.cli_support import react_exit_code
from homeserver.config import ConfigError, load_config
from homeserver.config.model import Config, DatabaseConfig


def _describe(db: DatabaseConfig) -> str:
    """The target for messages: never the password."""
    where = f"{db.user}@{db.host}:{db.port}/{db.database}"
    return where + (f" (schema {db.schema})" if db.schema else "")


def _sqlite_in_use(path: str) -> str | None:
    """Why the SQLite file is open elsewhere (a Parley still running on it), else None.

    Parley keeps SQLite in WAL mode, where every open connection holds a shared lock
    until it closes: an exclusive lock is refused while any other process has the file
    open, even an idle one. Copying a live database would give PostgreSQL a mix of
    moments (the port reads table by table), so the port refuses instead.
    """
    import sqlite3

    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        return str(e)
    finally:
        conn.close()
    return None


def _source_path(sqlite: str | None, old_config: str | None) -> str:
    if sqlite:
        return sqlite
    assert old_config is not None
    old = load_config(old_config)
    if old.database.engine != "sqlite":
        raise ConfigError(f"{old_config}: database.engine is {old.database.engine!r}, not "
                          "'sqlite'")
    return old.database.path


async def run_port_db(sqlite: str | None, config: str | Config, *, old_config: str | None = None,
                      resume: bool = False, force: bool = False, batch: int | None = None,
                      out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Port on the running reactor; returns the exit code (1 on any problem)."""
    from storage.database import Database
    from storage.engines import create_engine
    from storage.port import DEFAULT_BATCH, PortError, port_database

    try:
        cfg = load_config(config) if isinstance(config, str) else config
        path = _source_path(sqlite, old_config)
    except ConfigError as e:
        print(f"error: {e}", file=err)
        return 1
    if cfg.database.engine != "postgres":
        print("error: the config's database must be PostgreSQL (engine: postgres); it names "
              f"{cfg.database.engine!r}", file=err)
        return 1
    if not os.path.isfile(path):
        print(f"error: no SQLite database at {path}", file=err)
        return 1
    busy = _sqlite_in_use(path)
    if busy is not None:
        print(f"error: {path} is open in another process ({busy}): stop Parley (every "
              "process using this file) before porting it", file=err)
        return 1
    source = Database(create_engine(DatabaseConfig(engine="sqlite", path=path)))
    target = Database(create_engine(cfg.database), 1, 2)
    try:
        print(f"porting {path} into PostgreSQL {_describe(cfg.database)}", file=err)
        try:
            report = await port_database(source, target, resume=resume, force=force,
                                         batch=batch or DEFAULT_BATCH)
        except PortError as e:
            print(f"error: {e}", file=err)
            return 1
    finally:
        source.close()
        target.close()
    if report.emptied:
        print(f"--force: emptied {len(report.emptied)} tables of the target before the port",
              file=err)
    width = max((len(t) for t in report.counts), default=5)
    print(f"{'table':<{width}}  {'sqlite':>10}  {'postgres':>10}", file=out)
    empty = 0
    for table, (src, dst) in report.counts.items():
        if src == dst == 0:
            empty += 1
            continue
        mark = "" if src == dst else "  MISMATCH"
        print(f"{table:<{width}}  {src:>10}  {dst:>10}{mark}", file=out)
    if empty:
        print(f"(and {empty} empty tables, empty on both sides)", file=out)
    _print_sequences(report.checks, out)
    rows = sum(src for src, _ in report.counts.values())
    if not report.ok:
        for problem in report.problems:
            print(f"error: {problem}", file=err)
        print(f"port FAILED verification ({len(report.problems)} problem(s)); the progress "
              "is kept: fix the cause and run again with --resume", file=err)
        return 1
    print(f"ported {len(report.counts)} tables, {rows} rows in {report.elapsed_s:.1f}s: "
          "verified. Point the config at PostgreSQL and start Parley.", file=out)
    return 0


def _print_sequences(checks: list[Any], out: TextIO) -> None:
    """Each sequence: SQLite's position (streams), the largest copied position and the
    next value PostgreSQL hands out."""
    if not checks:
        return
    width = max([len(c.stream or c.sequence) for c in checks] + [15])
    print(f"{'stream/sequence':<{width}}  {'sqlite':>10}  {'max copied':>10}  "
          f"{'pg next':>10}", file=out)
    for c in checks:
        sqlite = "-" if c.sqlite_pos is None else str(c.sqlite_pos)
        top = "-" if c.max_copied is None else str(c.max_copied)
        mark = "" if c.ok else "  MISMATCH"
        print(f"{c.stream or c.sequence:<{width}}  {sqlite:>10}  {top:>10}  {c.pg_next:>10}"
              f"{mark}", file=out)


def cmd_port_db(args: argparse.Namespace) -> int:
    from homeserver.logging_setup import setup_logging

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    # Progress (rows, rate, ETA per table) is logged at INFO, whatever the server's level.
    setup_logging("INFO", cfg.log_format)
    logging.getLogger("twisted").setLevel(logging.WARNING)
    return react_exit_code(lambda: run_port_db(args.sqlite, cfg, old_config=args.old_config,
                                               resume=args.resume, force=args.force,
                                               batch=args.batch))


def _batch(text: str) -> int:
    from storage.port import MAX_BATCH

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number") from None
    if not 1 <= n <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_BATCH}")
    return n


def add_port_db_parser(sub: Any) -> None:
    """Add ``port-db`` to the ``parley`` sub-parsers."""
    p = sub.add_parser("port-db", help="copy a SQLite database into PostgreSQL")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sqlite", metavar="PATH", help="the SQLite database file to copy")
    src.add_argument("--from", dest="old_config", metavar="CONFIG",
                     help="the old (SQLite) config; its database.path is copied")
    p.add_argument("-c", "--config", "--to", dest="config", required=True,
                   help="the config whose database (PostgreSQL) receives the copy")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted port into the same database")
    again.add_argument("--force", action="store_true",
                       help="empty a non-empty target (every Parley table, all its rows "
                            "DELETED) and port into it")
    p.add_argument("--batch", type=_batch, default=None, metavar="N",
                   help="rows per transaction (default 5000)")
    p.set_defaults(func=cmd_port_db)
