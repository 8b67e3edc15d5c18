"""The connection pool: every query runs on a thread, never on the reactor."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.enterprise import adbapi

from storage.engines.base import Engine

logger = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[Any, ...]


class Txn:
    """A cursor inside one transaction, speaking ``?`` placeholders on every engine."""

    def __init__(self, cursor: Any, engine: Engine) -> None:
        self._cur = cursor
        self.engine = engine

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        if args:
            self._cur.execute(self.engine.convert_sql(sql), tuple(args))
        else:
            self._cur.execute(sql)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._cur.executemany(self.engine.convert_sql(sql), [tuple(r) for r in rows])

    def fetchone(self) -> Row | None:
        return self._cur.fetchone()

    def fetchall(self) -> list[Row]:
        return list(self._cur.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        self.execute(sql, args)
        return self.fetchall()

    def query_one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        self.execute(sql, args)
        return self._cur.fetchone()

    def next_stream_id(self, stream: str) -> int:
        """Allocate the next position of a stream inside this transaction.

        PostgreSQL uses a sequence (safe across processes); SQLite a counter row.
        """
        self._cur.execute(self.engine.next_stream_sql(stream))
        row = self._cur.fetchone()
        if row is None:
            raise RuntimeError(f"unknown stream {stream!r}")
        return int(row[0])

    def next_stream_ids(self, stream: str, n: int) -> list[int]:
        """``n`` new positions of a stream, ascending, in one statement where the engine
        can (a group commit's positions: one round trip instead of ``n``)."""
        if n <= 0:
            return []
        sql = self.engine.next_streams_sql(stream, n)
        if sql is None:
            return [self.next_stream_id(stream) for _ in range(n)]
        self._cur.execute(sql)
        rows = self._cur.fetchall()
        if not rows:
            raise RuntimeError(f"unknown stream {stream!r}")
        if len(rows) == n:
            return sorted(int(r[0]) for r in rows)
        if len(rows) != 1:
            raise RuntimeError(f"stream {stream!r}: {len(rows)} positions for {n}")
        top = int(rows[0][0])
        return list(range(top - n + 1, top + 1))


@dataclass(frozen=True)
class PoolStats:
    """The pool at one moment (for metrics)."""

    max: int  # connections the pool may open
    open: int  # connections open now
    busy: int  # threads running a transaction
    queued: int  # transactions waiting for a thread
    in_progress: int  # transactions started through :meth:`Database.run` and not done


class Database:
    """Runs functions inside transactions on the pool's threads."""

    def __init__(self, engine: Engine, pool_min: int = 1, pool_max: int = 1) -> None:
        self.engine = engine
        if engine.single_writer:
            pool_min = pool_max = 1
        self._pool = adbapi.ConnectionPool(
            engine.module.__name__,
            cp_min=pool_min,
            cp_max=pool_max,
            cp_openfun=engine.on_connect,
            cp_reconnect=True,
            cp_noisy=False,
            **engine.connect_kwargs(),
        )
        self._max = pool_max
        self._in_progress = 0
        # Told (name, seconds, succeeded) after every transaction: the metrics hook.
        self.observer: Callable[[str, float, bool], None] | None = None

    async def run(self, desc: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(txn, *args)`` in one transaction; commit on success, roll back on error."""

        def interaction(adb_txn: Any) -> T:
            return fn(Txn(adb_txn, self.engine), *args)

        start = time.monotonic()
        ok = False
        self._in_progress += 1
        try:
            result = await self._pool.runInteraction(interaction)
            ok = True
            return result
        finally:
            self._in_progress -= 1
            if self.observer is not None:
                self.observer(desc, time.monotonic() - start, ok)

    async def ping(self) -> None:
        """A trivial query (readiness probe); raises if the database does not answer."""
        await self.run("ping", lambda txn: txn.query_one("SELECT 1"))

    def pool_stats(self) -> PoolStats:
        threads = self._pool.threadpool
        return PoolStats(max=self._max, open=len(self._pool.connections),
                         busy=len(threads.working), queued=threads._queue.qsize(),  # noqa: SLF001
                         in_progress=self._in_progress)

    async def query(self, desc: str, sql: str, *args: Any) -> list[Row]:
        return await self.run(desc, lambda txn: txn.query(sql, args))

    async def query_one(self, desc: str, sql: str, *args: Any) -> Row | None:
        return await self.run(desc, lambda txn: txn.query_one(sql, args))

    async def execute(self, desc: str, sql: str, *args: Any) -> int:
        def _do(txn: Txn) -> int:
            txn.execute(sql, args)
            return txn.rowcount

        return await self.run(desc, _do)

    def is_integrity_error(self, exc: BaseException) -> bool:
        return self.engine.is_integrity_error(exc)

    def close(self) -> None:
        self._pool.close()
