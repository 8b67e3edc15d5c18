"""A parked /sync long-poll (issue 18): the wait of :meth:`SyncHandler.wait_for`, but
parked on the notifier as this small object, not as a suspended coroutine chain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.http.longpoll import LongPoll

if TYPE_CHECKING:
    from homeserver.handlers.sync import SyncHandler, SyncRequest, SyncToken

JsonDict = dict[str, Any]


class SyncPoll(LongPoll):
    """A parked /sync long-poll: :meth:`SyncHandler.wait_for`'s loop, parking on the
    notifier instead of awaiting it, so a parked /sync holds this object and not a
    coroutine chain (issue 18). Same checks, deadline and wake-ups as ``wait_for``."""

    __slots__ = ("handler", "req", "token", "deadline")

    def __init__(self, handler: SyncHandler, req: SyncRequest, token: SyncToken,
                 deadline: float) -> None:
        super().__init__()
        self.handler = handler
        self.req = req
        self.token = token
        self.deadline = deadline  # clock seconds

    async def step(self) -> JsonDict | None:
        """Until there is something for the user or the deadline: the answer, or None
        when parked (the notifier fires :meth:`resume` later)."""
        h, req = self.handler, self.req
        while not await h._has_updates(req, self.token):
            remaining = self.deadline - h._clock.time()
            if remaining <= 0 or h._notifier.closing:  # shutting down: answer now
                break
            rooms = await h._park_rooms(req.user_id)
            # Anything that arrived during the awaits above has already notified;
            # only park if the position is still the one just checked.
            if h.now_token() == self.token and h._notifier.park(  # type: ignore[attr-defined]
                    self, req.user_id, rooms, remaining):
                return None
            self.token = h.now_token()
        return await h._build(req, self.token)

    async def resume(self) -> tuple[int, Any] | None:
        self.token = self.handler.now_token()
        body = await self.step()
        return None if body is None else (200, body)
