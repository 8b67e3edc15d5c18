"""Admin roles: the permission vocabulary, the built-in roles and the ``admin_roles``
config section (custom roles as sets of permissions).

Which endpoint needs which permission is declared in one table,
homeserver/rest/admin/permissions.py; this module only says which role holds which
permission. The ``admin`` role holds every permission, and the users table's
``is_admin`` flag keeps meaning "role admin".

```yaml
admin_roles:                       # optional: extra roles, as lists of permissions
  helpdesk: [users.read, users.reset_password]
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ADMIN = "admin"

# Every permission an admin endpoint can require (kept short: one per kind of power).
PERMISSIONS: dict[str, str] = {
    "users.read": "list users, their details, devices and joined rooms (metadata only)",
    "users.write": "create users, modify their profile, admin flag and password",
    "users.deactivate": "deactivate users, with or without erasure",
    "users.reset_password": "reset a user's password, force a reset at next login",
    "users.sessions": "list and revoke a user's devices and sessions",
    "users.lock": "lock and unlock accounts (incident: lock and revoke all sessions)",
    "users.suspend": "suspend and unsuspend accounts (read-only)",
    "users.roles": "grant and revoke admin roles",
    "users.export": "export a user's data (GDPR access request): more than metadata",
    "rooms.read": "room metadata (list, details, members, state metadata), block and"
                  " purge/shutdown status",
    "rooms.write": "purge room history, block rooms, shut down and purge rooms",
    "jobs.read": "list background jobs and their progress",
    "media.quarantine": "quarantine and unquarantine media",
    "media.delete": "delete media",
    "media.read": "list a user's or a room's media (metadata only)",
    "reports.read": "list and read event, room and user reports (metadata only)",
    "reports.write": "resolve and delete reports",
    "server_notices.send": "send a server notice to a user",
    "users.shadow_ban": "shadow-ban users (their sends succeed but reach nobody)",
    "servers.read": "list blocked remote servers",
    "servers.block": "block and unblock remote servers",
    "audit.read": "read the audit trail",
    "registration_tokens": "read and manage registration tokens",
    "federation.read": "list federation destinations, their backoff and shared rooms",
    "federation.write": "reset a federation destination's backoff (retry now)",
}

BUILTIN_ROLES: dict[str, frozenset[str]] = {
    ADMIN: frozenset(PERMISSIONS),
    "moderator": frozenset({"users.read", "users.lock", "users.suspend", "rooms.read",
                            "rooms.write", "media.quarantine", "media.read", "reports.read",
                            "reports.write", "server_notices.send", "users.shadow_ban",
                            "servers.read", "jobs.read", "federation.read"}),
    "auditor": frozenset({"users.read", "rooms.read", "audit.read", "media.read",
                          "reports.read", "servers.read", "jobs.read"}),
    "support": frozenset({"users.read", "users.reset_password", "users.sessions"}),
}

ROLE_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}\Z"

# JSON schema of the section (homeserver/config/schema.py: "admin_roles").
ADMIN_ROLES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": ROLE_NAME_PATTERN},
    "additionalProperties": {
        "type": "array", "uniqueItems": True,
        "items": {"enum": sorted(PERMISSIONS)},
    },
}


def parse_admin_roles(raw: Mapping[str, Any] | None) -> dict[str, frozenset[str]]:
    """Custom roles from the (schema-validated) section; a built-in name is an error
    (their powers are fixed, so a config cannot quietly widen ``support``)."""
    out: dict[str, frozenset[str]] = {}
    for name, perms in (raw or {}).items():
        if name in BUILTIN_ROLES:
            raise ValueError(f"admin_roles.{name}: a built-in role cannot be redefined")
        unknown = set(perms) - set(PERMISSIONS)
        if unknown:
            raise ValueError(f"admin_roles.{name}: unknown permissions {sorted(unknown)}")
        out[name] = frozenset(perms)
    return out


class Roles:
    """The built-in roles plus the configured ones."""

    def __init__(self, custom: Mapping[str, frozenset[str]] | None = None) -> None:
        self._roles = {**BUILTIN_ROLES, **(custom or {})}

    def names(self) -> list[str]:
        return sorted(self._roles)

    def exists(self, role: str) -> bool:
        return role in self._roles

    def permissions(self, role: str | None) -> frozenset[str]:
        """What ``role`` may do (nothing for no role or a role no longer configured)."""
        if role is None:
            return frozenset()
        return self._roles.get(role, frozenset())

    def allows(self, role: str | None, permission: str) -> bool:
        return permission in self.permissions(role)
