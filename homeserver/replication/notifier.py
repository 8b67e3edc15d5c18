"""The notifier of a process in a multi-process deployment: wakes local waiters as
:class:`~homeserver.notifier.Notifier` does, and tells replication about each local
wake-up so it can be published to the other processes."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from homeserver.clock import Clock
from homeserver.notifier import Notifier


class ReplicatingNotifier(Notifier):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        # Set by replication: (users, rooms) of every wake-up caused in this process.
        self.on_local_notify: Callable[[list[str], list[str]], None] | None = None

    def notify(self, user_ids: Iterable[str] = (), room_ids: Iterable[str] = ()) -> None:
        users, rooms = list(user_ids), list(room_ids)
        super().notify(users, rooms)
        if self.on_local_notify is not None and (users or rooms):
            self.on_local_notify(users, rooms)

    def notify_remote(self, user_ids: Iterable[str], room_ids: Iterable[str]) -> None:
        """A wake-up that happened in another process: local waiters only."""
        super().notify(user_ids, room_ids)

    def wake_all(self) -> None:
        """Positions moved for unknown users (a catch-up): every waiter re-checks."""
        super().notify(list(self._by_user), list(self._by_room))
