"""Database metrics: transactions per store method (the name given to ``db.run``) with
their durations, and the connection pool's usage.

:class:`storage.database.Database` calls :meth:`DatabaseMetrics.transaction_done` after
every transaction (its ``observer``); the pool figures are read at scrape time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from homeserver.metrics.registry import PREFIX
from storage.database import Database

DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Names are code constants; should one ever be built from data, this bounds the
#: number of series and the rest count as "other".
MAX_NAMES = 1000
_NAME_OK = re.compile(r"^[A-Za-z0-9_.:-]{1,100}\Z")


class DatabaseMetrics:
    def __init__(self, registry: CollectorRegistry, db: Database) -> None:
        self.transactions = Counter(
            f"{PREFIX}db_transactions",
            "Database transactions, by store method and outcome (ok or error).",
            ["name", "outcome"], registry=registry)
        self.duration = Histogram(
            f"{PREFIX}db_transaction_duration_seconds",
            "Time a transaction took, waiting for a connection included, by store method.",
            ["name"], buckets=DB_BUCKETS, registry=registry)
        self._names: set[str] = set()
        registry.register(_PoolCollector(db))
        db.observer = self.transaction_done

    def _label(self, name: str) -> str:
        if name in self._names:
            return name
        if not _NAME_OK.match(name) or len(self._names) >= MAX_NAMES:
            return "other"
        self._names.add(name)
        return name

    def transaction_done(self, name: str, seconds: float, ok: bool) -> None:
        label = self._label(name)
        self.transactions.labels(label, "ok" if ok else "error").inc()
        self.duration.labels(label).observe(seconds)


class _PoolCollector(Collector):
    """The pool's state at scrape time."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._db.pool_stats()
        yield GaugeMetricFamily(f"{PREFIX}db_pool_max_connections",
                                "Connections the pool may open (pool_max).", value=stats.max)
        yield GaugeMetricFamily(f"{PREFIX}db_pool_connections",
                                "Connections the pool holds open.", value=stats.open)
        yield GaugeMetricFamily(f"{PREFIX}db_pool_busy",
                                "Pool threads running a transaction now.", value=stats.busy)
        yield GaugeMetricFamily(f"{PREFIX}db_pool_queued",
                                "Transactions waiting for a free connection.", value=stats.queued)
        yield GaugeMetricFamily(f"{PREFIX}db_transactions_in_progress",
                                "Transactions started and not finished (queued or running).",
                                value=stats.in_progress)
