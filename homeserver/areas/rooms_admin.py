"""The rooms admin area: room reads and blocking, room shutdown/purge jobs, and the
background jobs registry every job-running feature adds its source to.

Built after the rooms area (it hooks the block checks into membership, room creation
and the alias directory, and moves members through the normal event path); its
shutdown runner resumes unfinished jobs at start-up (homeserver/app.py)."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.areas.rooms import RoomsArea
from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.handlers.admin_rooms import AdminRoomsHandler
from homeserver.handlers.room_shutdown import (
    RoomShutdownHandler,
    RoomShutdownJobSource,
    ShutdownDeps,
)
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.jobs.listing import JobRegistry
from homeserver.jobs.sources import GdprExportJobSource, PurgeHistoryJobSource
from storage.database import Database
from storage.stores.admin_rooms import AdminRoomStore
from storage.stores.all_stores import Stores
from storage.stores.background_jobs import BackgroundJobStore


@dataclass(frozen=True)
class RoomsAdminArea:
    rooms: AdminRoomsHandler
    shutdown: RoomShutdownHandler
    jobs: JobRegistry  # other features' job sources are added to it by the wiring


def build_rooms_admin(config: Config, clock: Clock, db: Database, stores: Stores,
                      rooms: RoomsArea, audit: SecurityEventRecorder) -> RoomsAdminArea:
    store = AdminRoomStore(db, config.server_name)
    handler = AdminRoomsHandler(clock, store, stores.events, audit)
    # Blocked rooms and aliases are refused on the normal paths.
    rooms.membership.check_room_blocked = handler.check_room_not_blocked
    rooms.room_creation.check_room_blocked = handler.check_room_not_blocked
    rooms.room_creation.check_alias_blocked = handler.check_alias_not_blocked
    rooms.directory.check_alias_blocked = handler.check_alias_not_blocked
    shutdown = RoomShutdownHandler(ShutdownDeps(
        server_name=config.server_name, clock=clock, store=store, rooms=stores.rooms,
        aliases=stores.room_aliases, users=stores.users, admin_rooms=handler,
        room_creation=rooms.room_creation, membership=rooms.membership,
        creation=rooms.event_creation, persister=rooms.persister, audit=audit))
    jobs = JobRegistry()
    background = BackgroundJobStore(db)
    jobs.add_source(PurgeHistoryJobSource(background))
    jobs.add_source(GdprExportJobSource(background))
    jobs.add_source(RoomShutdownJobSource(store))
    return RoomsAdminArea(rooms=handler, shutdown=shutdown, jobs=jobs)
