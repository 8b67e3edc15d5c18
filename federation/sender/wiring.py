"""Wires the federation sender and the inbound ``/send`` endpoint into a homeserver
(called from federation/setup.py when federation is enabled)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from federation.inbound_edus import InboundEdus
from federation.pdu_checks import server_allowed_by_acl
from federation.send_servlet import SendServlet
from federation.sender import FederationSender
from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.handlers.server_blocks import ServerBlocks
from homeserver.http.router import Router

logger = logging.getLogger(__name__)
_ACL = ("m.room.server_acl", "")


@dataclass
class SenderArea:
    sender: FederationSender
    send_servlet: SendServlet
    inbound_edus: InboundEdus

    async def stop(self) -> None:
        await self.sender.stop()


def _guarded(name: str, fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A hook that never fails the local action it follows (a key upload, a device
    change): federation errors are logged only."""

    async def hook(*args: Any) -> None:
        try:
            await fn(*args)
        except Exception:  # noqa: BLE001 (logged; the local change stands)
            logger.exception("federation sender: %s hook failed", name)
    return hook


async def register_sender(config: Config, clock: Clock, events: SecurityEventRecorder,
                          router: Router, client: Any, deps: Any) -> SenderArea | None:
    """Subscribes the sender to the fan-out and the handlers' hooks, registers
    ``PUT /send/{txnId}``, and resumes what was queued before the last stop."""
    if deps is None or deps.stores is None or deps.sync is None or deps.e2ee is None \
            or deps.rooms is None:
        return None
    stores = deps.stores
    blocks = ServerBlocks(config.server_name, clock, stores.blocked_servers, events,
                          config.federation_blocked_servers)
    sender = FederationSender(
        config.server_name, clock, config.federation, _queue_store(config, stores),
        stores.events, client, blocks.is_blocked, stores.devices, stores.e2e_keys,
        stores.cross_signing)
    deps.rooms.fanout.subscribe("federation_sender", sender.event_persisted)
    sender.undelivered = deps.rooms.fanout.lowest_undelivered
    deps.sync.typing.on_edu.append(sender.typing_edu)
    deps.sync.receipts.on_edu.append(sender.receipt_edu)
    deps.sync.presence.on_edu.append(sender.presence_edu)
    deps.e2ee.device_lists.on_shared_change.append(
        _guarded("device list", sender.device_changed))
    deps.e2ee.cross_signing.on_change.append(_guarded("signing key", sender.signing_keys_changed))
    deps.e2ee.to_device.remote_send = sender.to_device
    stores.federation_queue.on_retry_reset.append(sender.wake)

    persister = deps.rooms.persister

    async def acl_allows(room_id: str, server: str) -> bool:
        acl = (await persister.current_state(room_id, [_ACL])).get(_ACL)
        return acl is None or server_allowed_by_acl(server, acl.content)

    edus = InboundEdus(config.server_name, stores.room_members, deps.sync.typing,
                       deps.sync.receipts, deps.sync.presence, deps.e2ee.device_lists,
                       deps.e2ee.to_device, acl_allows)
    servlet = SendServlet(clock, stores.federation_queue, stores.rooms, edus, blocks.is_blocked,
                          on_heard_from=sender.heard_from)
    servlet.register(router)
    if getattr(deps, "roles", None) is not None:  # workers: homeserver/replication/roles.py
        deps.roles.configure_federation_sender(sender)
    await sender.start()
    return SenderArea(sender, servlet, edus)


def _queue_store(config: Config, stores: Any, instance: str | None = None) -> Any:
    """The queue store a sender replays from: with event persisters each events writer
    replays its own rooms' local events (storage/stores/federation_writer_queue.py;
    ``instance``: a writer other than main, with a checkpoint of its own)."""
    wc = config.workers
    if not wc.event_writers:
        return stores.federation_queue
    from homeserver.replication.multi_writer import writer_for
    from storage.stores.federation_writer_queue import WriterQueueStore

    me = wc.instance
    return WriterQueueStore(stores.federation_queue, instance,
                            lambda room_id: writer_for(wc, room_id) == me,
                            me in wc.event_writers)


def forget_room_servers(sender: FederationSender, room_id: str) -> None:
    """A member event another process persisted (event persisters): the room's servers
    are read again when next needed."""
    sender._room_servers.pop(room_id, None)  # noqa: SLF001 (the sender's cache)


async def start_writer_queue(config: Config, clock: Clock, events: SecurityEventRecorder,
                             stores: Any, rooms: Any, roles: Any) -> FederationSender | None:
    """On an event_persister worker with federation on: a sender that only queues the
    PDUs of the local events this process persists into the durable queue (PostgreSQL)
    and wakes the process sending to each destination (main, or the federation_sender
    worker owning it) over Redis; EDUs stay with main. None elsewhere."""
    wc = config.workers
    if not config.federation.enabled or wc.is_main or wc.instance not in wc.event_writers:
        return None
    blocks = ServerBlocks(config.server_name, clock, stores.blocked_servers, events,
                          config.federation_blocked_servers)
    sender = FederationSender(
        config.server_name, clock, config.federation, _queue_store(config, stores, wc.instance),
        stores.events, None, blocks.is_blocked, stores.devices, stores.e2e_keys,
        stores.cross_signing)
    rooms.fanout.subscribe("federation_queue", sender.event_persisted)
    sender.undelivered = rooms.fanout.lowest_undelivered
    roles.configure_writer_queue(sender)
    await sender.start()
    return sender
