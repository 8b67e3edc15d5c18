"""A long-poll parked without a suspended coroutine (issue 18).

A servlet that would otherwise ``await`` the notifier returns ``(200, poll)`` with a
:class:`LongPoll` already parked on the notifier. :class:`~homeserver.http.server.MatrixResource`
then lets the request's coroutine chain (``_handle`` → ``_dispatch`` → servlet → handler)
finish and keeps only the poll: one slotted object per parked request holding what the
answer needs, instead of five suspended frames, their Deferreds and the request's
``ApiRequest``. When the notifier fires it (woken or timed out), the resource runs
:meth:`LongPoll.resume` in a fresh coroutine: it answers, or parks the poll again.
"""

from __future__ import annotations

from typing import Any, Protocol

from homeserver.notifier import Waiter


class PollOwner(Protocol):
    """The HTTP side of a parked poll (MatrixResource): told when the poll fired."""

    def poll_fired(self, poll: LongPoll) -> None: ...


class LongPoll(Waiter):
    """A parked long-poll; subclasses hold their own state in slots and implement
    :meth:`resume`. ``request``/``started``/``owner`` are set by the HTTP layer."""

    __slots__ = ("request", "started", "owner")

    def __init__(self) -> None:
        super().__init__()
        self.request: Any = None
        self.started = 0.0
        self.owner: PollOwner | None = None

    def on_fire(self, woken: bool) -> None:
        if self.owner is not None:
            self.owner.poll_fired(self)
        # else: fired before the HTTP layer took it (it checks ``fired`` when it does)

    async def resume(self) -> tuple[int, Any] | None:
        """After firing: the answer, or None when the poll parked itself again."""
        raise NotImplementedError
