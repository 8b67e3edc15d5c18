"""Time for the server, behind one object so tests can drive it with ``task.Clock``.

Every piece of logic that compares against "now" (token expiry, refresh lifetime,
cache TTLs) asks a :class:`Clock`; nothing calls ``time.time()`` directly.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Clock:
    """Wraps an ``IReactorTime`` (the reactor, or ``twisted.internet.task.Clock``)."""

    def __init__(self, reactor_time: IReactorTime) -> None:
        self._time = reactor_time

    def time(self) -> float:
        """Seconds since the epoch."""
        return self._time.seconds()

    def time_msec(self) -> int:
        """Milliseconds since the epoch, as Matrix timestamps are."""
        return int(self._time.seconds() * 1000)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> IDelayedCall:
        return self._time.callLater(delay, fn, *args)
