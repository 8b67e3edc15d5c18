"""Process metrics (RSS, CPU seconds, open and maximum file descriptors, start time)
from prometheus-client's own collectors, registered on the server's registry instead
of the global one. They read ``/proc``; elsewhere they export nothing."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector


def register_process_collectors(registry: CollectorRegistry) -> None:
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
