"""What the admin API does to user accounts: lookups (metadata only: never message
content, never keys), modification, deactivation, password resets, devices and sessions,
lock / suspend / forced password reset, and role changes. Every change is recorded in the
audit trail as ``admin_action`` with the actor, the target and the action.

Least privilege beyond the per-endpoint permission: only an ``admin`` may act on an
account that holds a role (so ``support`` cannot reset an admin's password, nor a
moderator lock another moderator), nobody may lock, suspend, deactivate or re-role
themselves, and only ``admin`` may grant roles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.auth.requester import ClientInfo, Requester
from homeserver.auth.roles import ADMIN, Roles
from homeserver.clock import Clock
from homeserver.handlers.account import AccountHandler
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.profile import ProfileHandler
from homeserver.handlers.registration import RegistrationHandler
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.handlers.sessions import SessionHandler
from homeserver.http.errors import Codes, MatrixError, forbidden, not_found
from homeserver.identifiers import split_user_id
from storage.stores.devices import DeviceRecord
from storage.stores.roles import AdminUserRow, RoleStore, UserQuery
from storage.stores.room_members import RoomMemberStore
from storage.stores.users import UserStore


@dataclass(frozen=True)
class Actor:
    """Who acts, with the role that let them in, and where from (for the audit)."""

    requester: Requester
    role: str | None
    client: ClientInfo


def user_json(row: AdminUserRow) -> dict[str, Any]:
    """A user as Synapse's admin API shows one (plus our role and restrictions)."""
    return {
        "name": row.user_id, "displayname": row.displayname, "avatar_url": row.avatar_url,
        "is_guest": row.is_guest, "admin": row.is_admin, "deactivated": row.deactivated,
        "erased": row.erased, "locked": row.locked, "suspended": row.suspended,
        "shadow_banned": row.shadow_banned, "user_type": None, "creation_ts": row.created_ts,
        "last_seen_ts": row.last_seen_ts, "threepids": [], "external_ids": [],
        "admin_role": row.role if not row.is_admin else ADMIN,
        "password_reset_required": row.password_reset_required,
    }


@dataclass(frozen=True)
class AdminUsersDeps:
    server_name: str
    clock: Clock
    users: UserStore
    roles_store: RoleStore
    roles: Roles
    members: RoomMemberStore
    registration: RegistrationHandler
    account: AccountHandler
    profile: ProfileHandler
    devices: DeviceHandler
    sessions: SessionHandler
    events: SecurityEventRecorder


class AdminUsersHandler:
    def __init__(self, deps: AdminUsersDeps) -> None:
        self._d = deps

    # -- checks --

    def check_local(self, user_id: str) -> None:
        _, server = split_user_id(user_id)
        if server != self._d.server_name:
            raise MatrixError(400, "Only local users can be managed", Codes.INVALID_PARAM)

    async def get(self, user_id: str) -> AdminUserRow:
        self.check_local(user_id)
        row = await self._d.roles_store.get_user(user_id)
        if row is None:
            raise not_found("User not found")
        return row

    async def _target(self, actor: Actor, user_id: str, *, not_self: bool = True,
                      active: bool = False) -> AdminUserRow:
        """The target of a change, after the least-privilege checks."""
        row = await self.get(user_id)
        if active and row.deactivated:
            raise not_found("User not found or deactivated")
        if not_self and user_id == actor.requester.user_id:
            raise forbidden("You cannot do this to your own account")
        target_role = ADMIN if row.is_admin else row.role
        if target_role is not None and actor.role != ADMIN:
            raise forbidden("Only an admin may act on an account that holds an admin role")
        return row

    async def _audit(self, actor: Actor, action: str, target: str, **details: Any) -> None:
        r = actor.requester
        await self._d.events.record(
            "admin_action", "success", actor.client, user_id=r.user_id,
            device_id=r.device_id, session_id=r.session_id, target=target,
            details={"action": action, "user_id": target, "role": actor.role, **details},
        )

    # -- lookups (metadata only) --

    async def list_users(self, q: UserQuery) -> tuple[list[AdminUserRow], int]:
        return await self._d.roles_store.list_users(q)

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        return await self._d.devices.list_devices(user_id)

    async def get_device(self, user_id: str, device_id: str) -> DeviceRecord:
        return await self._d.devices.get_device(user_id, device_id)

    async def joined_rooms(self, user_id: str) -> list[str]:
        await self.get(user_id)
        return [m.room_id for m in await self._d.members.rooms_for_user(user_id)]

    # -- create / modify --

    async def upsert(self, actor: Actor, user_id: str, body: dict[str, Any]) -> bool:
        """PUT /v2/users/{userId}: create (True) or modify (False) an account."""
        self.check_local(user_id)
        existing = await self._d.roles_store.get_user(user_id)
        created = existing is None
        if created:
            localpart, _ = split_user_id(user_id)
            await self._d.registration.create_account(
                localpart, body.get("password"), is_admin=False)
        else:
            assert existing is not None
            await self._target(actor, user_id, not_self=False)
            if user_id == actor.requester.user_id and (
                    "admin" in body or body.get("deactivated") or body.get("locked")):
                raise forbidden("You cannot change your own admin flag, lock or deactivate "
                                "yourself")
        target_req = Requester(user_id=user_id, device_id=None, session_id="")
        if "displayname" in body:
            await self._d.profile.set_field(target_req, user_id, "displayname",
                                            body["displayname"] or "")
        if "avatar_url" in body:
            await self._d.profile.set_field(target_req, user_id, "avatar_url",
                                            body["avatar_url"] or "")
        if not created and body.get("password") is not None:
            await self._d.account.change_password(
                target_req, body["password"], bool(body.get("logout_devices", True)),
                actor.client)
            await self._d.roles_store.set_flag(user_id, "password_reset_required", False)
        if "admin" in body:
            await self.set_role(actor, user_id, ADMIN if body["admin"] else None,
                                _checked=True)
        if "locked" in body:
            await self._d.roles_store.set_flag(user_id, "locked", bool(body["locked"]))
        if body.get("deactivated") and (existing is None or not existing.deactivated):
            await self._d.account.deactivate(target_req, False, actor.client)
        elif body.get("deactivated") is False and existing is not None and existing.deactivated:
            raise MatrixError(400, "Reactivating an account is not supported",
                              Codes.INVALID_PARAM)
        changed = sorted(k for k in body if k != "password") + (
            ["password"] if "password" in body else [])
        await self._audit(actor, "create_user" if created else "modify_user", user_id,
                          fields=changed)
        return created

    async def deactivate(self, actor: Actor, user_id: str, erase: bool) -> None:
        """With ``erase``: GDPR erasure (homeserver/gdpr/erasure.py), also of an account
        deactivated earlier without it. Only an admin may erase an account holding a
        role (``_target``)."""
        row = await self._target(actor, user_id)
        requester = actor.requester.user_id
        if not row.deactivated:
            await self._d.account.deactivate(
                Requester(user_id=user_id, device_id=None, session_id=""), erase, actor.client,
                requested_by=requester)
        elif erase and not row.erased:
            await self._d.account.erase_deactivated(user_id, requester, actor.client)
        await self._audit(actor, "deactivate_user", user_id, erase=erase)
        if erase:
            self._d.account.start_due_purges()  # after the entries above: it pseudonymises them

    async def reset_password(self, actor: Actor, user_id: str, new_password: str,
                             logout_devices: bool) -> None:
        await self._target(actor, user_id, active=True)
        await self._d.account.change_password(
            Requester(user_id=user_id, device_id=None, session_id=""), new_password,
            logout_devices, actor.client)
        await self._d.roles_store.set_flag(user_id, "password_reset_required", False)
        await self._audit(actor, "reset_password", user_id, logout_devices=logout_devices)

    async def force_password_reset(self, actor: Actor, user_id: str) -> None:
        """Incident: the password no longer logs in until an admin/support resets it,
        and every session ends now."""
        await self._target(actor, user_id, active=True)
        await self._d.roles_store.set_flag(user_id, "password_reset_required", True)
        await self._d.sessions.revoke_user(user_id, "admin_force_password_reset")
        await self._audit(actor, "force_password_reset", user_id)

    # -- devices and sessions --

    async def delete_devices(self, actor: Actor, user_id: str, device_ids: list[str]) -> None:
        await self._target(actor, user_id, not_self=False)
        await self._d.devices.delete_devices(user_id, device_ids, actor.client, "admin")
        await self._audit(actor, "delete_devices", user_id, device_ids=device_ids)

    async def logout_all(self, actor: Actor, user_id: str) -> None:
        await self._target(actor, user_id, not_self=False)
        await self._d.sessions.revoke_user(user_id, "admin_logout")
        await self._audit(actor, "revoke_sessions", user_id)

    # -- restrictions --

    async def set_locked(self, actor: Actor, user_id: str, locked: bool,
                         revoke_sessions: bool = False) -> None:
        await self._target(actor, user_id, active=True)
        await self._d.roles_store.set_flag(user_id, "locked", locked)
        if revoke_sessions:
            await self._d.sessions.revoke_user(user_id, "admin_lock")
        await self._audit(actor, "lock_user" if locked else "unlock_user", user_id,
                          revoke_sessions=revoke_sessions)

    async def set_suspended(self, actor: Actor, user_id: str, suspended: bool) -> None:
        await self._target(actor, user_id, active=True)
        await self._d.roles_store.set_flag(user_id, "suspended", suspended)
        await self._audit(actor, "suspend_user" if suspended else "unsuspend_user", user_id)

    # -- roles --

    async def set_role(self, actor: Actor, user_id: str, role: str | None,
                       _checked: bool = False) -> str | None:
        """Grant (or with None revoke) a role; only ``admin`` may, never on oneself."""
        if actor.role != ADMIN:
            raise forbidden("Only an admin may grant or revoke roles")
        if user_id == actor.requester.user_id:
            raise forbidden("You cannot change your own role")
        if role is not None and not self._d.roles.exists(role):
            raise MatrixError(400, f"Unknown role {role!r}", Codes.INVALID_PARAM)
        if not _checked:
            await self._target(actor, user_id, active=True)
        previous = await self._d.roles_store.set_role(user_id, role)
        await self._audit(actor, "set_role", user_id, new_role=role, previous_role=previous)
        return previous
