"""The one check every token-authenticated admin endpoint makes: is the caller a server admin?

Kept in one place so no admin servlet can forget it or do it differently. Denials are
recorded as security events because probing admin endpoints is worth noticing.
"""

from __future__ import annotations

from homeserver.auth.requester import Requester
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.server import ApiRequest
from storage.stores.users import UserStore

ADMIN_PREFIX = "/_synapse/admin"


def admin_paths(path: str, versions: tuple[str, ...] = ("v1",)) -> list[str]:
    """``/registration_tokens`` → ``/_synapse/admin/v1/registration_tokens`` (Synapse's paths)."""
    return [f"{ADMIN_PREFIX}/{v}{path}" for v in versions]


class AdminAuth:
    def __init__(self, users: UserStore, events: SecurityEventRecorder) -> None:
        self._users = users
        self._events = events

    async def require_admin(self, req: ApiRequest) -> Requester:
        """Return the requester if they are a (non-deactivated) server admin, else 403.

        The flag is read from the database on every call rather than cached, so
        revoking admin rights takes effect on the next request.
        """
        requester = req.require_requester()
        user = await self._users.get_user(requester.user_id)
        if user is None or not user.is_admin or user.deactivated:
            # The route template, never the raw path: paths can carry secrets
            # (e.g. /registration_tokens/{token}).
            await self._events.record(
                "admin_action", "failure", req.client, user_id=requester.user_id,
                device_id=requester.device_id, session_id=requester.session_id,
                reason="not a server admin",
                details={"method": req.method, "route": req.route.template},
            )
            raise MatrixError(403, "You are not a server admin", Codes.FORBIDDEN)
        return requester
