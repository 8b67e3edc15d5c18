"""What the server is doing beyond HTTP: long-poll waiters and notifier wake-ups,
persisted events, security events, password hashing and WebSocket connections.

Components keep plain counters (or are asked at scrape time); nothing here reaches
into a handler's logic. Labels are constants from the code (event kinds, security
event types and outcomes), never identifiers or content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from homeserver.handlers.event_fanout import PersistedEvent
from homeserver.metrics.registry import PREFIX


class NotifierStats(Protocol):
    notifications: int  # notify() calls
    woken: int  # waiters woken by them

    def waiting_count(self) -> int: ...


class HasherStats(Protocol):
    pending: int
    max_pending: int


class SecurityEventLike(Protocol):
    event_type: str
    outcome: str


class ActivityMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_persisted = Counter(
            f"{PREFIX}events_persisted",
            "Events stored by the persister, by how they arrived (local, remote, ...).",
            ["kind"], registry=registry)
        self.security_events = Counter(
            f"{PREFIX}security_events",
            "Security events recorded, by type and outcome.",
            ["type", "outcome"], registry=registry)
        self._registry = registry

    def event_persisted(self, record: PersistedEvent) -> None:
        """An :class:`~homeserver.handlers.event_fanout.EventFanout` subscriber."""
        self.events_persisted.labels(record.kind.value).inc()

    def security_event(self, event: SecurityEventLike) -> None:
        """A :class:`~homeserver.handlers.security_events.SecurityEventRecorder` sink."""
        self.security_events.labels(event.event_type, event.outcome).inc()

    def watch(self, notifier: NotifierStats, hasher: HasherStats,
              websocket_count: Callable[[], int]) -> None:
        """Read these components' own counters at scrape time."""
        self._registry.register(_ComponentCollector(notifier, hasher, websocket_count))

    def watch_audit_head(self, chain_head: Callable[[], tuple[int, str]]) -> None:
        """Export the audit chain's head (sequence number and entry hash), so an
        external system can notarise it (``parley audit verify --anchor SEQ:HASH``)."""
        self._registry.register(_AuditHeadCollector(chain_head))


class _AuditHeadCollector(Collector):
    def __init__(self, chain_head: Callable[[], tuple[int, str]]) -> None:
        self._head = chain_head

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        seq, entry_hash = self._head()
        yield GaugeMetricFamily(f"{PREFIX}audit_chain_seq",
                                "Sequence number of the audit trail's newest entry.", value=seq)
        yield InfoMetricFamily(f"{PREFIX}audit_chain_head",
                               "The audit trail's newest entry hash (SHA-256 hex).",
                               value={"seq": str(seq), "hash": entry_hash})


class _ComponentCollector(Collector):
    def __init__(self, notifier: NotifierStats, hasher: HasherStats,
                 websocket_count: Callable[[], int]) -> None:
        self._notifier = notifier
        self._hasher = hasher
        self._websockets = websocket_count

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        n = self._notifier
        yield GaugeMetricFamily(f"{PREFIX}sync_waiters",
                                "Long-polls (/sync, /events, WebSocket streams) waiting now.",
                                value=n.waiting_count())
        yield CounterMetricFamily(f"{PREFIX}notifier_notifications",
                                  "Notifier wake-up calls (something new for users or rooms).",
                                  value=n.notifications)
        yield CounterMetricFamily(f"{PREFIX}notifier_woken_waiters",
                                  "Waiting long-polls woken by the notifier.", value=n.woken)
        yield GaugeMetricFamily(f"{PREFIX}password_hashing_pending",
                                "Argon2id hashes queued or running now.",
                                value=self._hasher.pending)
        yield GaugeMetricFamily(f"{PREFIX}password_hashing_max_pending",
                                "Hashes allowed at once before 429 (password_hashing.max_pending).",
                                value=self._hasher.max_pending)
        yield GaugeMetricFamily(f"{PREFIX}websocket_connections",
                                "Open WebSocket connections.", value=self._websockets())
