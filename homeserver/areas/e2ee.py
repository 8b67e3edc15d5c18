"""The E2EE area: device and one-time keys, the device-list stream, to-device
messages, cross-signing and key backup. The server holds public keys only."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.handlers.cross_signing import CrossSigningHandler
from homeserver.handlers.device_lists import DeviceListHandler
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.e2e_keys import E2eKeysHandler
from homeserver.handlers.event_fanout import EventFanout
from homeserver.handlers.event_persister import live_events
from homeserver.handlers.key_backup import KeyBackupHandler
from homeserver.handlers.to_device import ToDeviceHandler
from homeserver.notifier import NotifierInterface
from storage.stores.all_stores import Stores


@dataclass(frozen=True)
class E2eeArea:
    device_lists: DeviceListHandler
    e2e_keys: E2eKeysHandler
    to_device: ToDeviceHandler
    cross_signing: CrossSigningHandler
    key_backup: KeyBackupHandler


async def build_e2ee(config: Config, clock: Clock, stores: Stores, notifier: NotifierInterface,
                     devices: DeviceHandler, fanout: EventFanout) -> E2eeArea:
    device_lists = DeviceListHandler(stores.device_lists, stores.e2e_keys, stores.room_members,
                                     notifier)
    await device_lists.load_position()
    fanout.subscribe("device_lists", live_events(device_lists.after_persist))
    devices.on_device_deleted.append(device_lists.on_device_deleted)
    devices.on_device_changed.append(device_lists.on_device_changed)
    e2e_keys = E2eKeysHandler(config.server_name, clock, stores.e2e_keys, device_lists)
    to_device = ToDeviceHandler(config.server_name, clock, stores.to_device, stores.devices,
                                notifier)
    await to_device.load_position()
    devices.on_device_deleted.append(to_device.on_device_deleted)
    cross_signing = CrossSigningHandler(config.server_name, clock, stores.cross_signing,
                                        stores.devices)
    cross_signing.on_change.append(device_lists.notify_device_change)
    cross_signing.on_private_change.append(
        lambda viewer, user_id, targets: device_lists.notify_device_change(
            user_id, targets, only_to=viewer))
    devices.on_device_deleted.append(cross_signing.on_device_deleted)
    e2e_keys.query_providers.append(cross_signing.query_provider)
    return E2eeArea(device_lists=device_lists, e2e_keys=e2e_keys, to_device=to_device,
                    cross_signing=cross_signing, key_backup=KeyBackupHandler(stores.key_backup))
