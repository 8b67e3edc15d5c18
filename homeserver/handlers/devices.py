"""Devices: created at login, listed, renamed, deleted (which ends their sessions)."""

from __future__ import annotations

import secrets
import string
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.auth.requester import ClientInfo
from homeserver.clock import Clock
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.handlers.sessions import IssuedTokens, SessionHandler
from homeserver.http.errors import not_found
from storage.database import Txn
from storage.stores.devices import DeviceRecord, DeviceStore


def generate_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


def device_json(d: DeviceRecord) -> dict[str, Any]:
    """The spec's Device object. An unnamed device shows its id as its name: the spec
    allows omitting the key, but matrix-nio rejects a device without one, and ``null``
    would break the spec's schema."""
    out: dict[str, Any] = {"device_id": d.device_id,
                           "display_name": d.display_name if d.display_name is not None
                           else d.device_id}
    if d.last_seen_ip is not None:
        out["last_seen_ip"] = d.last_seen_ip
    if d.last_seen_ts is not None:
        out["last_seen_ts"] = d.last_seen_ts
    return out


class DeviceHandler:
    def __init__(
        self,
        clock: Clock,
        store: DeviceStore,
        sessions: SessionHandler,
        events: SecurityEventRecorder,
    ) -> None:
        self._clock = clock
        self._store = store
        self._sessions = sessions
        self._events = events
        # Called with (user_id, device_id) after a device is deleted (pushers, keys, ...).
        self.on_device_deleted: list[Callable[[str, str], Awaitable[Any]]] = []
        # Called with (user_id, device_id) after a device is created or renamed: a
        # device-list change others must hear of (DeviceListHandler.on_device_changed).
        self.on_device_changed: list[Callable[[str, str], Awaitable[Any]]] = []

    async def ensure_device(
        self, user_id: str, device_id: str | None, display_name: str | None, client: ClientInfo
    ) -> str:
        device_id = device_id or generate_device_id()
        created = await self._store.upsert_device(
            user_id, device_id, display_name, self._clock.time_msec(), client.ip,
            client.user_agent,
        )
        if created:
            await self._changed(user_id, device_id)
        return device_id

    async def _changed(self, user_id: str, device_id: str) -> None:
        for hook in self.on_device_changed:
            await hook(user_id, device_id)

    async def login_device(
        self,
        user_id: str,
        device_id: str | None,
        display_name: str | None,
        want_refresh: bool,
        client: ClientInfo,
        via: str | None = None,
        consume: Callable[[Txn], None] | None = None,
    ) -> tuple[str, IssuedTokens]:
        """Everything a successful login does: create or reuse the device, start a
        session on it (ending the device's previous one) and record the event.
        Shared by /login, /register and shared-secret registration. What the token
        may do comes from the stored account (see :meth:`SessionHandler.start_session`);
        ``consume`` is spent in the transaction that starts the session (a login token)."""
        # The session first: it refuses a deactivated account before any device is made.
        device_id = device_id or generate_device_id()
        tokens = await self._sessions.start_session(user_id, device_id, want_refresh, consume)
        await self.ensure_device(user_id, device_id, display_name, client)
        await self._events.record("login", "success", client, user_id=user_id,
                                  device_id=device_id, session_id=tokens.session_id,
                                  details={"via": via} if via else None)
        return device_id, tokens

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        return await self._store.list_devices(user_id)

    async def get_device(self, user_id: str, device_id: str) -> DeviceRecord:
        device = await self._store.get_device(user_id, device_id)
        if device is None:
            raise not_found("Device not found")
        return device

    async def rename(self, user_id: str, device_id: str, name: str | None) -> None:
        if not await self._store.update_display_name(user_id, device_id, name):
            raise not_found("Device not found")
        await self._changed(user_id, device_id)

    async def delete_devices(
        self, user_id: str, device_ids: list[str], client: ClientInfo | None, reason: str
    ) -> None:
        """Delete devices and revoke their sessions at once (unknown ids are ignored)."""
        if not device_ids:
            return
        await self._sessions.revoke_devices(user_id, device_ids, reason)
        await self._store.delete_devices(user_id, device_ids)
        for device_id in device_ids:
            for hook in self.on_device_deleted:
                await hook(user_id, device_id)
        for device_id in device_ids:
            await self._events.record("device_delete", "success", client, user_id=user_id,
                                      device_id=device_id, reason=reason)

    async def delete_all_devices(
        self, user_id: str, client: ClientInfo | None, reason: str, except_device: str | None
    ) -> None:
        devices = [d.device_id for d in await self._store.list_devices(user_id)
                   if d.device_id != except_device]
        await self.delete_devices(user_id, devices, client, reason)
