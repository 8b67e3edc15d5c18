"""Account lifecycle: password change and deactivation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from homeserver.auth.password_policy import PasswordPolicy
from homeserver.auth.passwords import PasswordHasher
from homeserver.auth.requester import ClientInfo, Requester
from homeserver.clock import Clock
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.handlers.sessions import SessionHandler
from storage.stores.profiles import ProfileStore
from storage.stores.users import UserStore

if TYPE_CHECKING:
    from homeserver.gdpr.erasure import ErasureHandler


class AccountHandler:
    def __init__(
        self,
        clock: Clock,
        users: UserStore,
        profiles: ProfileStore,
        hasher: PasswordHasher,
        policy: PasswordPolicy,
        devices: DeviceHandler,
        sessions: SessionHandler,
        events: SecurityEventRecorder,
    ) -> None:
        # Told the user id once an account is deactivated (the rooms area leaves its rooms).
        self.on_deactivated: list[Callable[[str], Awaitable[None]]] = []
        # Told the user id once an account is erased (caches of "is this sender erased").
        self.on_erased: list[Callable[[str], None]] = []
        # GDPR erasure (homeserver/gdpr/erasure.py), set at wiring: locks the account
        # first, deletes keys and settings, schedules the purge job.
        self.erasure: ErasureHandler | None = None
        self._clock = clock
        self._users = users
        self._profiles = profiles
        self._hasher = hasher
        self._policy = policy
        self._devices = devices
        self._sessions = sessions
        self._events = events

    def check_new_password(self, new_password: str) -> None:
        """400 ``M_WEAK_PASSWORD`` if the policy refuses it (before any UIA is spent)."""
        self._policy.check(new_password)

    async def change_password(
        self, requester: Requester, new_password: str, logout_devices: bool, client: ClientInfo
    ) -> None:
        self._policy.check(new_password)
        new_hash = await self._hasher.hash(new_password)
        await self._users.set_password_hash(requester.user_id, new_hash, self._clock.time_msec())
        if logout_devices:
            await self._devices.delete_all_devices(
                requester.user_id, client, "password_change", except_device=requester.device_id
            )
            await self._sessions.revoke_user(requester.user_id, "password_change",
                                             except_session=requester.session_id)
        await self._events.record(
            "password_change", "success", client, user_id=requester.user_id,
            device_id=requester.device_id, session_id=requester.session_id,
            details={"logout_devices": logout_devices},
        )

    async def deactivate(self, requester: Requester, erase: bool, client: ClientInfo,
                         requested_by: str | None = None) -> None:
        """``requested_by``: the admin deactivating someone else (None: the user)."""
        user_id = requester.user_id
        if erase and self.erasure is not None:
            await self.erasure.lock(user_id)  # before anything else: nothing more gets in
        await self._sessions.revoke_user(user_id, "deactivate")
        await self._devices.delete_all_devices(user_id, client, "deactivate", except_device=None)
        await self._users.deactivate(user_id, self._clock.time_msec())
        if erase:
            # Before the rooms are left: from now on the user's events are served pruned
            # to whoever was not in the room when they were sent.
            await self._mark_erased(user_id)
        for deactivated in self.on_deactivated:  # e.g. part rooms, reject invites and knocks
            await deactivated(user_id)
        details: dict[str, object] = {"erase": erase}
        if erase:
            details["erasure_job"] = await self._erase_data(user_id, requested_by or user_id)
        await self._events.record("deactivate", "success", client, user_id=user_id,
                                  device_id=requester.device_id, details=details)
        if erase and requested_by is None:
            self.start_due_purges()

    def start_due_purges(self) -> None:
        """Run an erasure purge that has no grace period now (after the audit entries of
        the request that erased: an admin's caller records its own, then calls this)."""
        if self.erasure is not None:
            self.erasure.start_due()

    async def erase_deactivated(self, user_id: str, requested_by: str,
                                client: ClientInfo) -> None:
        """Erase an account that was deactivated without erasure (admin API)."""
        if self.erasure is not None:
            await self.erasure.lock(user_id)
        await self._mark_erased(user_id)
        job = await self._erase_data(user_id, requested_by)
        await self._events.record("erase", "success", client, user_id=requested_by,
                                  target=user_id, details={"erasure_job": job})

    async def _mark_erased(self, user_id: str) -> None:
        await self._users.mark_erased(user_id, self._clock.time_msec())
        for erased in self.on_erased:
            erased(user_id)

    async def _erase_data(self, user_id: str, requested_by: str) -> str | None:
        """Profile now; keys, backups and settings now and the purge job later."""
        await self._profiles.clear(user_id)
        if self.erasure is None:
            return None
        return (await self.erasure.erase_now(user_id, requested_by)).job_id
