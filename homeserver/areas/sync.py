"""The sync area: /sync's long-poll and its sources (receipts, typing, presence, the
E2EE streams), and what it reads from the other areas."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.areas.accounts import AccountsArea
from homeserver.areas.e2ee import E2eeArea
from homeserver.areas.rooms import RoomsArea
from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.handlers.event_persister import live_events
from homeserver.handlers.presence import PresenceHandler
from homeserver.handlers.receipts import ReceiptsHandler
from homeserver.handlers.sync import SyncHandler
from homeserver.handlers.typing import TypingHandler
from homeserver.notifier import NotifierInterface
from storage.stores.all_stores import Stores


@dataclass(frozen=True)
class SyncArea:
    sync: SyncHandler
    presence: PresenceHandler
    typing: TypingHandler
    receipts: ReceiptsHandler


async def build_sync(config: Config, clock: Clock, stores: Stores, notifier: NotifierInterface,
                     accounts: AccountsArea, rooms: RoomsArea, e2ee: E2eeArea) -> SyncArea:
    account_data = accounts.account_data
    presence = PresenceHandler(config.server_name, clock, stores.presence, stores.room_members,
                               stores.users, notifier, enabled=config.presence_enabled)
    await presence.load()
    typing = TypingHandler(clock, stores.room_members, notifier, presence)
    receipts = ReceiptsHandler(clock, stores.receipts, stores.events, stores.room_members,
                               rooms.visibility, account_data, stores.account_data, notifier,
                               presence)
    await receipts.load_position()
    sync = SyncHandler(
        clock, stores.events, rooms.event_creation, stores.room_members, rooms.visibility,
        stores.account_data, account_data, notifier,
        sources=[receipts, typing, presence, e2ee.device_lists, e2ee.to_device],
        serializer=rooms.client_events,  # redactions and prev_content applied in batches
        push_rules=accounts.push_rules,  # m.push_rules account data in sync
        aggregations=rooms.relations.bundle,
        unread_counts=rooms.push_actions.unread_counts,
    )
    await sync.load_positions()
    account_data.on_change.append(sync.note_account_data)
    accounts.push_rules.on_change.append(sync.note_account_data)
    rooms.fanout.subscribe("typing", live_events(typing.after_persist))
    rooms.fanout.subscribe("presence", live_events(presence.after_persist))
    return SyncArea(sync=sync, presence=presence, typing=typing, receipts=receipts)
