"""The per-server :class:`~prometheus_client.CollectorRegistry` and its ``/metrics``
resource.

Every metric object is created against the registry of its homeserver, never the
global default one, so several homeservers in one process (the test suite) do not
collide and each ``/metrics`` shows only its own server.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web import resource, server

#: Every metric Parley defines starts with this.
PREFIX = "parley_"

# No ``*_created`` series: they double the exposition and no dashboard uses them.
disable_created_metrics()


def new_registry() -> CollectorRegistry:
    """An empty registry for one homeserver."""
    return CollectorRegistry(auto_describe=True)


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in the Prometheus text exposition format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsResource(resource.Resource):
    """``GET /metrics``: the text exposition of one registry.

    Mounted at the root for the exact path ``/metrics``; the listener in front of it
    only lets the request through when it names the ``metrics`` resource.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802 (twisted.web API)
        body, content_type = exposition(self._registry)
        request.setHeader("Content-Type", content_type)
        request.setHeader("Cache-Control", "no-cache, no-store, must-revalidate")
        request.setHeader("X-Content-Type-Options", "nosniff")
        return body

    def render_HEAD(self, request: server.Request) -> bytes:  # noqa: N802
        return self.render_GET(request)

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader("Allow", "GET, HEAD")
            request.setHeader("Content-Type", "application/json")
            return b'{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request: method not allowed"}'
        return super().render(request)
