"""Admin actions that are audited: each method here does the action AND records its
``admin_action`` security event, so the admin servlets only parse, call and render
(issue 13). Who made the request (IP, user agent, request id) comes from the request
being served (homeserver/audit/context.py); the acting admin is passed as a Requester.
"""

from __future__ import annotations

from typing import Any

from homeserver.audit.service import query_entries
from homeserver.auth.requester import Requester
from homeserver.auth.roles import ADMIN, Roles
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.media.handler import MediaHandler
from storage.stores.registration_tokens import RegistrationToken, RegistrationTokenStore
from storage.stores.roles import RoleStore
from storage.stores.security_events import AuditFilter
from storage.stores.users import UserStore


async def record_admin_action(events: SecurityEventRecorder, requester: Requester,
                              details: dict[str, Any], outcome: str = "success",
                              **kwargs: Any) -> None:
    """One ``admin_action`` entry with the acting admin as actor."""
    await events.record("admin_action", outcome, None, user_id=requester.user_id,
                        device_id=requester.device_id, session_id=requester.session_id,
                        details=details, **kwargs)


class AdminAccess:
    """Roles and the permission check every admin route makes; denials are recorded
    because probing admin endpoints is worth noticing."""

    def __init__(self, users: UserStore, events: SecurityEventRecorder,
                 roles: Roles | None = None, role_store: RoleStore | None = None) -> None:
        self._users = users
        self._events = events
        self.roles = roles or Roles()
        self._role_store = role_store

    async def role_of(self, user_id: str) -> str | None:
        """The active role of a (non-deactivated) user; None without one."""
        user = await self._users.get_user(user_id)
        if user is None or user.deactivated:
            return None
        if user.is_admin:
            return ADMIN
        return await self._role_store.get_role(user_id) if self._role_store else None

    async def authorize(self, requester: Requester, permission: str | None, method: str,
                        route: str) -> tuple[bool, str | None]:
        """(allowed, role). A refusal is recorded with the route template (never the raw
        path: paths can carry secrets, e.g. /registration_tokens/{token})."""
        role = await self.role_of(requester.user_id)
        if permission is not None and self.roles.allows(role, permission):
            return True, role
        await record_admin_action(
            self._events, requester, {"method": method, "route": route, "role": role,
                                      "permission": permission},
            outcome="failure",
            reason="not a server admin" if role is None else "permission denied")
        return False, role


class AuditQueryHandler:
    """Reading the audit trail, itself recorded (``audit_query``)."""

    def __init__(self, events: SecurityEventRecorder) -> None:
        self._events = events

    async def query(self, requester: Requester, flt: AuditFilter, from_token: str | None,
                    limit: int) -> tuple[list[dict[str, Any]], str | None]:
        entries, next_token = await query_entries(self._events.store, flt, from_token, limit)
        await record_admin_action(
            self._events, requester,
            {"action": "audit_query", "actor": flt.actor, "target": flt.target,
             "filter_action": flt.action, "outcome": flt.outcome,
             "from_ts": flt.from_ts, "to_ts": flt.to_ts, "returned": len(entries)},
            target=flt.actor or flt.target)
        return entries, next_token


class AdminMediaHandler:
    """Incident response on media, audited: who did what to which media (ids only)."""

    def __init__(self, media: MediaHandler, events: SecurityEventRecorder) -> None:
        self._media = media
        self._events = events

    async def _audit(self, requester: Requester, action: str, media_id: str) -> None:
        await record_admin_action(self._events, requester,
                                  {"action": action, "media_id": media_id})

    async def quarantine(self, requester: Requester, server_name: str, media_id: str) -> None:
        await self._media.quarantine(server_name, media_id, requester.user_id)
        await self._audit(requester, "quarantine_media", media_id)

    async def unquarantine(self, requester: Requester, server_name: str,
                           media_id: str) -> None:
        await self._media.unquarantine(server_name, media_id)
        await self._audit(requester, "unquarantine_media", media_id)

    async def delete(self, requester: Requester, server_name: str, media_id: str) -> None:
        await self._media.delete(server_name, media_id)
        await self._audit(requester, "delete_media", media_id)


class RegistrationTokenAdmin:
    """Creating, updating and deleting registration tokens, each audited; the token
    itself never goes into the event (it is a credential that grants sign-up)."""

    def __init__(self, store: RegistrationTokenStore, events: SecurityEventRecorder) -> None:
        self._store = store
        self._events = events

    async def create(self, requester: Requester, candidates: list[str], generated: bool,
                     uses_allowed: int | None, expiry_time: int | None,
                     now: int) -> str | None:
        """The first candidate not already taken, stored; None if all are taken."""
        for candidate in candidates:
            if await self._store.create(candidate, uses_allowed, expiry_time, now):
                await record_admin_action(
                    self._events, requester,
                    {"action": "registration_token_create", "generated": generated,
                     "uses_allowed": uses_allowed, "expiry_time": expiry_time})
                return candidate
        return None

    async def update(self, requester: Requester, token: str,
                     changes: dict[str, int | None]) -> RegistrationToken | None:
        """Apply ``changes`` (none: just read the token); None for an unknown token."""
        updated = await self._store.update_fields(token, changes)
        if updated is not None and changes:
            await record_admin_action(self._events, requester,
                                      {"action": "registration_token_update", **changes})
        return updated

    async def delete(self, requester: Requester, token: str) -> bool:
        if not await self._store.delete(token):
            return False
        await record_admin_action(self._events, requester,
                                  {"action": "registration_token_delete"})
        return True
