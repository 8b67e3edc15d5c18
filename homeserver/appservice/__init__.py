"""Application services (bridges): registration files (config.py), ``as_token``
authentication and masquerading (auth.py), the namespace logic (handler.py), the
persistent HS → AS transaction queue (scheduler.py) and the outbound client (api.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.appservice.api import AppserviceApi
from homeserver.appservice.auth import AppserviceAuthenticator, AppserviceTokens
from homeserver.appservice.config import load_appservices
from homeserver.appservice.encryption import AppserviceCrypto
from homeserver.appservice.handler import AppserviceHandler
from homeserver.appservice.scheduler import AppserviceScheduler
from homeserver.auth.requester import Authenticator
from homeserver.clock import Clock
from homeserver.config.model import Config
from storage.database import Database
from storage.stores.all_stores import Stores
from storage.stores.appservice import AppserviceStore

APPSERVICE_LOGIN_TYPE = "m.login.application_service"


@dataclass
class AppserviceArea:
    handler: AppserviceHandler
    tokens: AppserviceTokens
    scheduler: AppserviceScheduler
    crypto: AppserviceCrypto

    def wrap(self, authenticator: Authenticator, stores: Stores) -> Authenticator:
        """The authenticator that knows ``as_token``s (itself when none is registered)."""
        if not self.handler.services:
            return authenticator
        return AppserviceAuthenticator(authenticator, self.tokens, stores.users, stores.devices)


    def wire_handlers(self, accounts: Any, rooms: Any) -> None:
        """Hooks in registration (exclusive users), aliases (exclusive aliases, asking a
        service about an unknown one, per-network room lists) and the event fan-out."""
        accounts.registration.appservices = self.handler
        rooms.directory.appservice_alias = self.handler.appservice_alias
        rooms.directory.network_rooms = self.handler.network_rooms
        if self.handler.services:
            rooms.directory.query_alias = self.handler.query_alias
            rooms.membership.query_alias = self.handler.query_alias
            rooms.fanout.subscribe("appservices", self.handler.event_persisted)

    def wire_ephemeral(self, typing: Any, receipts: Any, presence: Any) -> None:
        """Typing, receipts and presence reach services registered with
        ``receive_ephemeral`` (MSC2409) in their transactions' ``ephemeral``."""
        if any(s.receive_ephemeral for s in self.handler.services):
            typing.on_edu.append(self.handler.room_edu)
            receipts.on_edu.append(self.handler.room_edu)
            presence.on_edu.append(self.handler.presence_edu)

    def wire_e2ee(self, to_device: Any, device_lists: Any, e2e_keys: Any) -> None:
        """To-device messages for services with ``receive_ephemeral`` (MSC4203); device
        list changes and key counts for services with ``org.matrix.msc3202``."""
        services = self.handler.services
        if any(s.receive_ephemeral for s in services):
            to_device.on_stored.append(self.crypto.to_device_stored)
        if any(s.msc3202 for s in services):
            device_lists.on_changed.append(self.crypto.device_list_changed)
            device_lists.on_left_room.append(self.crypto.left_room)
            e2e_keys.on_key_counts_changed.append(self.crypto.keys_changed)
            self.scheduler.set_key_counts(self.crypto.key_counts)

    def wire_after_plugins(self, accounts: Any, rate_limiter: Any) -> None:
        """``m.login.application_service`` beside plugins' login types, and the rate
        limit exemption of services registered with ``rate_limited: false``."""
        if not self.handler.services:
            return
        rate_limiter.add_exemption(self.handler.is_exempt_from_rate_limits)
        auth = accounts.password_auth
        inner_types, inner_login = auth.login_types, auth.provider_login

        def login_types() -> list[str]:
            return [*inner_types(), APPSERVICE_LOGIN_TYPE]

        async def provider_login(login_type: str, body: dict[str, Any]) -> str | None:
            if login_type == APPSERVICE_LOGIN_TYPE:
                return self.handler.login_user(body)
            return await inner_login(login_type, body) if inner_login is not None else None

        auth.login_types, auth.provider_login = login_types, provider_login

    async def start(self) -> None:
        await self.handler.ensure_senders()
        await self.handler.replay()  # events a crash kept from their queue
        self.scheduler.start()

    async def stop(self) -> None:
        self.handler.stop_checkpoints()
        await self.scheduler.stop()


def check_registrations(config: Config) -> None:
    """Start-up validation of the registration files (raises ConfigError)."""
    load_appservices(config.app_service_config_files, config.server_name)


def build_appservices(config: Config, clock: Clock, db: Database, stores: Stores,
                      reactor: Any) -> AppserviceArea:
    services = load_appservices(config.app_service_config_files, config.server_name)
    store = AppserviceStore(db)
    api = AppserviceApi(reactor)
    scheduler = AppserviceScheduler(services, store, stores.events, api, clock)
    handler = AppserviceHandler(config.server_name, services, clock, store, stores.users,
                                stores.room_members, stores.room_aliases, api, scheduler)
    scheduler.set_before_send(handler.ask_about_unknown_users)
    handler.events = stores.events
    crypto = AppserviceCrypto(services, scheduler, stores.room_members, stores.e2e_keys)
    return AppserviceArea(handler, handler.tokens, scheduler, crypto)
