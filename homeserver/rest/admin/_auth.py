"""The one check every token-authenticated admin endpoint makes: does the caller's role
hold the permission this route is declared with (homeserver/rest/admin/permissions.py)?

Kept in one place so no admin servlet can forget it or do it differently. Roles are
read from the database on every call rather than cached, so revoking a role takes
effect on the next request. Denials are recorded as security events because probing
admin endpoints is worth noticing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from homeserver.auth.requester import Requester
from homeserver.auth.roles import Roles
from homeserver.handlers.admin_actions import AdminAccess
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.server import ApiRequest
from homeserver.rest.admin.permissions import permission_for

if TYPE_CHECKING:
    from homeserver.rest.routes import Components

logger = logging.getLogger(__name__)

ADMIN_PREFIX = "/_synapse/admin"


def admin_paths(path: str, versions: tuple[str, ...] = ("v1",)) -> list[str]:
    """``/registration_tokens`` → ``/_synapse/admin/v1/registration_tokens`` (Synapse's paths)."""
    return [f"{ADMIN_PREFIX}/{v}{path}" for v in versions]


class AdminAuth:
    """The request-facing side of :class:`AdminAccess` (homeserver/handlers/admin_actions.py):
    finds the route's permission, asks the handler (which records denials), answers 403."""

    def __init__(self, access: AdminAccess) -> None:
        self._access = access
        self.roles = access.roles

    async def role_of(self, user_id: str) -> str | None:
        """The active role of a (non-deactivated) user; None without one."""
        return await self._access.role_of(user_id)

    async def require_admin(self, req: ApiRequest) -> Requester:
        """Return the requester if their role holds this route's permission, else 403."""
        requester, _ = await self.require_role(req)
        return requester

    async def require_role(self, req: ApiRequest) -> tuple[Requester, str | None]:
        """:meth:`require_admin`, also returning the role that allowed the request.

        The permission comes from the route's entry in the permissions table; a route
        missing there is refused to everyone (and logged), never opened by default.
        """
        requester = req.require_requester()
        permission = permission_for(req.method, req.route.template)
        if permission is None:
            logger.error("admin route %s %s has no permission declared", req.method,
                         req.route.template)
        allowed, role = await self._access.authorize(requester, permission, req.method,
                                                     req.route.template)
        if not allowed:
            raise MatrixError(403, "You are not a server admin" if role is None else
                              f"Your admin role lacks the permission {permission}",
                              Codes.FORBIDDEN)
        return requester, role


def admin_auth_for(c: Components) -> AdminAuth:
    """The AdminAuth of a server: its stores and the configured custom roles."""
    return AdminAuth(AdminAccess(c.stores.users, c.events, Roles(c.config.admin_roles),
                                 c.stores.roles))
