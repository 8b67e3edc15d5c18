"""Wiring of push delivery (called from homeserver/app.py): the gateway client, the
notification builder and the pusher pool, hooked to new push actions and read
receipts, with ``parley_push_sent_total{outcome}`` on the server's registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.push_actions import PushActionsHandler
from homeserver.handlers.receipts import ReceiptsHandler
from homeserver.push.sender.gateway import GatewayClient
from homeserver.push.sender.notification import NotificationBuilder
from homeserver.push.sender.pool import PusherPool, PushMetrics
from homeserver.push.sender.pusher import PusherDeps
from storage.stores.all_stores import Stores


async def build_pusher_pool(config: Config, clock: Clock, stores: Stores, reactor: Any,
                            creation: EventCreationHandler, push_actions: PushActionsHandler,
                            receipts: ReceiptsHandler, registry: CollectorRegistry) -> PusherPool:
    metrics = PushMetrics(registry)
    builder = NotificationBuilder(config.push, creation, stores.events, stores.room_members,
                                  push_actions.unread_counts)
    pool = PusherPool(PusherDeps(stores.pushers, stores.events, builder,
                                 GatewayClient(reactor, config.push), clock, metrics.count))
    push_actions.on_added.append(pool.on_push_actions)
    receipts.on_read.append(pool.on_read)
    await pool.start()
    return pool
