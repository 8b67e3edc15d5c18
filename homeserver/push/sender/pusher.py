"""One HTTP pusher's delivery: its notifications in stream order, one at a time.

The queue is the database: the user's unread, notifying ``event_push_actions`` rows
after the pusher's stored position (``pushers.last_stream_ordering``), which moves
forward after each notification the gateway accepted. A restart therefore resumes
exactly where delivery stopped (a crash between the gateway's answer and the update
repeats that one notification: at-least-once, never a skip).

A failed push (unreachable, blocked address, timeout, non-2xx) is retried after
1 s, doubling to at most an hour (Synapse's backoff); while backing off, new events
only join the queue. A pusher failing for more than a day drops the notification it
is stuck on (so a gateway that comes back is not flooded with old pushes) and goes
on. A gateway answering ``rejected`` with our pushkey removes the pusher.

Push actions of different rooms are written by concurrent fan-out deliveries, so a
row may be committed after a row with a higher stream ordering was already sent. Such
a late row (announced through :meth:`HttpPusher.on_new_actions`, below what the last
read of the queue covered) is kept in memory and sent next, out of order; only a
restart at that moment could lose it.

When the user reads (a receipt), the new badge is sent as a counts-only notification
if it changed since the last push, once, without retries (as Synapse).

Logs name the user and app id, never the pushkey, URL or content.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from homeserver.clock import Clock
from homeserver.push.sender.gateway import GatewayBlocked, GatewayClient, GatewayError
from homeserver.push.sender.notification import NotificationBuilder
from storage.stores.events import EventStore
from storage.stores.pushers import PendingPush, Pusher, PusherStore

logger = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 3600.0
GIVE_UP_AFTER_MS = 24 * 3600 * 1000
BATCH = 50

PusherKey = tuple[str, str, str]  # user id, app id, pushkey

# Results of one send.
_OK, _FAILED, _GONE = "ok", "failed", "gone"


@dataclass(frozen=True)
class PusherDeps:
    store: PusherStore
    events: EventStore
    builder: NotificationBuilder
    gateway: GatewayClient
    clock: Clock
    count: Callable[[str], None]  # parley_push_sent_total{outcome}


class HttpPusher:
    def __init__(self, key: PusherKey, deps: PusherDeps,
                 on_gone: Callable[[PusherKey], None]) -> None:
        self.key = key
        self._deps = deps
        self._on_gone = on_gone
        self._name = f"{key[0]} ({key[1]})"
        self._backoff = INITIAL_BACKOFF_S
        self._timer: IDelayedCall | None = None
        self._running: defer.Deferred[None] | None = None
        self._again = False
        self._stopped = False
        self._badge_wanted = False
        self._last_badge: int | None = None
        # Late rows: below what the queue read covered (see the module docstring).
        self._horizon = 0
        self._recent: dict[str, PendingPush] = {}
        self._late: dict[str, PendingPush] = {}

    # -- triggers -----------------------------------------------------------------------

    def on_new_actions(self, rows: list[PendingPush]) -> None:
        for row in rows:
            if row.stream_ordering <= self._horizon:
                self._late[row.event_id] = row
            else:
                self._recent[row.event_id] = row
        self.kick()

    def on_read(self) -> None:
        self._badge_wanted = True
        self.kick()

    def kick(self) -> None:
        """Process now, unless processing already (it goes round again) or backing off
        (the timer will)."""
        if self._stopped:
            return
        if self._running is not None:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            return
        self._running = defer.ensureDeferred(self._process())

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._running is not None:
            self._running.cancel()

    @property
    def backing_off(self) -> bool:
        return self._timer is not None and self._timer.active()

    def _on_timer(self) -> None:
        self._timer = None
        self.kick()

    # -- the loop -----------------------------------------------------------------------

    async def _process(self) -> None:
        try:
            while not self._stopped:
                self._again = False
                more = await self._run_once()
                if self._stopped or self.backing_off or not (more or self._again):
                    break
        except defer.CancelledError:
            pass
        except Exception:
            logger.exception("push delivery failed for %s", self._name)
        finally:
            self._running = None

    async def _run_once(self) -> bool:
        """One pass: late rows, then a batch of the queue, then a badge update. True
        when the batch was full (more may be waiting)."""
        store = self._deps.store
        pusher = await store.get_pusher(*self.key)
        if pusher is None or pusher.kind != "http":
            self._gone()
            return False
        position = pusher.last_stream_ordering
        for row in sorted(self._late.values(), key=lambda r: r.stream_ordering):
            if row.stream_ordering > position:
                self._late.pop(row.event_id, None)  # the queue read below covers it
                continue
            if await store.is_unread(self.key[0], row.event_id):
                result = await self._send(pusher, row)
                if result == _GONE:
                    return False
                if result == _FAILED and not await self._failed(pusher, None):
                    return False
            self._late.pop(row.event_id, None)
        self._recent = {}
        rows = await store.pending_pushes(self.key[0], position, BATCH)
        horizon = rows[-1].stream_ordering if rows else position
        returned = {r.event_id for r in rows}
        for row in self._recent.values():
            if row.stream_ordering <= horizon and row.event_id not in returned:
                self._late[row.event_id] = row
        self._recent = {k: r for k, r in self._recent.items() if r.stream_ordering > horizon}
        self._horizon = max(self._horizon, horizon)
        for row in rows:
            result = await self._send(pusher, row)
            if result == _GONE:
                return False
            if result == _FAILED:
                if not await self._failed(pusher, row):
                    return False
                continue
            if not await store.advance_pusher(*self.key, row.stream_ordering,
                                              self._deps.clock.time_msec()):
                self._gone()
                return False
            self._backoff = INITIAL_BACKOFF_S
            pusher = _with_position(pusher, row.stream_ordering)
        if self._badge_wanted:
            self._badge_wanted = False
            await self._update_badge(pusher)
        return len(rows) == BATCH

    async def _failed(self, pusher: Pusher, row: PendingPush | None) -> bool:
        """After a failed send: True to drop the notification and go on (failing for
        over a day), False to back off."""
        store, now = self._deps.store, self._deps.clock.time_msec()
        since = pusher.failing_since
        if since is None:
            await store.set_failing_since(*self.key, now)
            since = now
        if now - since > GIVE_UP_AFTER_MS:
            logger.warning("giving up on a notification for %s after a day of failures",
                           self._name)
            self._deps.count("dropped")
            self._backoff = INITIAL_BACKOFF_S
            if row is not None:
                await store.advance_pusher(*self.key, row.stream_ordering, None)
            else:
                await store.set_failing_since(*self.key, None)
            return True
        logger.info("push to the gateway of %s failed: retrying in %ds", self._name,
                    self._backoff)
        self._timer = self._deps.clock.call_later(self._backoff, self._on_timer)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        return False

    # -- sending ------------------------------------------------------------------------

    async def _send(self, pusher: Pusher, row: PendingPush) -> str:
        event = await self._deps.events.get_event(row.event_id)
        actions: Any = json.loads(row.actions_json)
        if event is None or not isinstance(actions, list) or "notify" not in actions:
            return _OK  # purged or redacted meanwhile: nothing to send
        builder = self._deps.builder
        badge = await builder.badge(self.key[0])
        body = await builder.for_event(pusher, event, actions, badge)
        answer = await self._post(pusher, body, "")
        if answer is None:
            return _FAILED
        rejected = answer.get("rejected")
        if isinstance(rejected, list) and pusher.pushkey in rejected:
            logger.info("the gateway rejected a pushkey of %s: removing the pusher", self._name)
            await self._deps.store.delete_pusher(*self.key)
            self._deps.count("rejected")
            self._gone()
            return _GONE
        self._deps.count("sent")
        self._last_badge = badge
        return _OK

    async def _update_badge(self, pusher: Pusher) -> None:
        badge = await self._deps.builder.badge(self.key[0])
        if badge == self._last_badge:
            return
        if await self._post(pusher, NotificationBuilder.badge_only(pusher, badge), "badge_") \
                is not None:
            self._last_badge = badge

    async def _post(self, pusher: Pusher, body: dict[str, Any], prefix: str
                    ) -> dict[str, Any] | None:
        """The gateway's answer, or None (counted) when the push failed."""
        try:
            answer = await self._deps.gateway.post(str(pusher.data.get("url", "")), body)
        except GatewayBlocked:
            logger.warning("the push gateway of %s is on a blocked address", self._name)
            self._deps.count(prefix + "blocked")
            return None
        except GatewayError as e:
            logger.warning("push to the gateway of %s failed: %s", self._name, e)
            self._deps.count(prefix + "failed")
            return None
        if prefix:
            self._deps.count(prefix + "sent")
        return answer

    def _gone(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._on_gone(self.key)


def _with_position(pusher: Pusher, position: int) -> Pusher:
    return replace(pusher, last_stream_ordering=position, failing_since=None)
