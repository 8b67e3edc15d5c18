"""HTTP request metrics, recorded at the one dispatch point
(:meth:`homeserver.http.server.MatrixResource._handle`).

Labels are the route *template* (``/_matrix/client/v3/rooms/{roomId}/send/...``),
never the raw path, which carries user ids, room ids and tokens; a request that
matched no route is ``(unmatched)``. Methods outside the HTTP set are folded into
``OTHER`` so a client cannot create series at will.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from homeserver.metrics.registry import PREFIX

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
# Seconds; long-polls (/sync, /events) land in the top buckets by design.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


class HttpMetrics:
    """Requests by route template, method and status; latency per route; in flight."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}http_requests", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=registry)
        self.latency = Histogram(
            f"{PREFIX}http_request_duration_seconds",
            "Time from receiving a request to answering it, by route template and method.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge(
            f"{PREFIX}http_requests_in_flight", "HTTP requests being handled now.",
            registry=registry)
        self.rate_limited = Counter(
            f"{PREFIX}rate_limit_rejections",
            "Requests refused with 429 M_LIMIT_EXCEEDED, by limit class.",
            ["limit"], registry=registry)

    def started(self) -> None:
        self.in_flight.inc()

    def finished(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method_label(method)
        self.in_flight.dec()
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def rejected(self, limit_class: str) -> None:
        """A rate limiter (or the password-hashing bound) refused a request."""
        self.rate_limited.labels(limit_class).inc()
