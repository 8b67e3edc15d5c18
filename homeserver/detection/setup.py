"""Wiring of server notices and the detectors (called once from the composition root)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.detection.alerts import Alerts
from homeserver.detection.detectors import Detection
from homeserver.detection.policy import watch_policy_rejections
from homeserver.detection.shared_state import shared_redis
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


def wire_shared_lockouts(config: Config, detection: DetectionArea | None, mfa: Any,
                         limiter: Any, reactor: Any) -> Callable[[], Awaitable[None]] | None:
    """With a ``redis`` section: the login lockout, the spraying window and the MFA
    code lockout kept in Redis (on the rate limiter's connection when it has one), so
    every process enforces them. Returns a closer for a connection opened here."""
    redis, closer = shared_redis(config, reactor, limiter)
    if redis is None:
        return None
    if detection is not None:
        detection.detection.share(redis)
    mfa.shared_lockout.redis = redis
    return closer
