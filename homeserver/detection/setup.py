"""Wiring of server notices and the detectors (called once from the composition root)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.detection.alerts import Alerts
from homeserver.detection.detectors import Detection
from homeserver.detection.policy import watch_policy_rejections
from homeserver.handlers.server_notices import ServerNoticesHandler
from storage.database import Database
from storage.stores.all_stores import Stores
from storage.stores.server_notices import ServerNoticeStore


@dataclass(frozen=True)
class DetectionArea:
    notices: ServerNoticesHandler
    detection: Detection
    alerts: Alerts


async def build_detection(config: Config, clock: Clock, db: Database, stores: Stores,
                          accounts: Any, rooms: Any,
                          registry: CollectorRegistry) -> DetectionArea:
    """``accounts`` / ``rooms`` are the AccountsArea and RoomsArea (typed loosely to
    keep this module out of their import graph)."""
    store = ServerNoticeStore(db)
    notices = ServerNoticesHandler(
        config.server_name, config.server_notices, clock, store, stores.users,
        stores.profiles, stores.room_members, rooms.room_creation, rooms.membership,
        rooms.event_creation, accounts.account_data)
    await notices.ensure_system_user()
    alerts = Alerts(accounts.security_events, registry, notices)
    detection = Detection(config.detection, clock, alerts, store, stores.devices,
                          notices.system_user_id)
    accounts.security_events.add_sink(detection.security_event)
    accounts.password_auth.lockout_check = detection.check_login
    accounts.account.on_deactivated.append(store.forget_user)
    rooms.fanout.subscribe("detection", detection.event_persisted)
    watch_policy_rejections(rooms.event_creation, accounts.security_events,
                            notices.system_user_id)
    return DetectionArea(notices, detection, alerts)
