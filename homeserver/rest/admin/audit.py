"""``GET /_parley/admin/v1/audit``: the audit trail, for server admins (403 otherwise).

Query parameters (all optional): ``actor`` (user id), ``target``, ``action``,
``outcome``, ``from_ts`` / ``to_ts`` (ms, inclusive), ``limit`` (1..1000, default 100)
and ``from`` (the opaque ``next_batch`` of the previous page). Newest first:

    {"entries": [{"seq", "ts", "action", "event_type", "outcome", "actor": {...},
                  "target", "reason", "request_id", "details", "prev_hash", "hash"}],
     "next_batch": "..."}     # absent on the last page

Entries hold identifiers and metadata only, never a secret or message content. Reading
the trail is itself recorded (``admin_action`` / ``audit_query``).
"""

from __future__ import annotations

from typing import Any

from homeserver.audit.service import DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT
from homeserver.handlers.admin_actions import AuditQueryHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.params import MAX_SAFE_INTEGER
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.rest.admin._auth import AdminAuth
from storage.stores.security_events import AuditFilter

AUDIT_PATH = "/_parley/admin/v1/audit"
MAX_FILTER_LENGTH = 255


def _filter_param(req: ApiRequest, name: str) -> str | None:
    value = req.query(name)
    if value is None:
        return None
    if not value or len(value) > MAX_FILTER_LENGTH or "\x00" in value:
        raise MatrixError(400, f"Query parameter '{name}' must be 1 to {MAX_FILTER_LENGTH} "
                          "characters", Codes.INVALID_PARAM)
    return value


class AuditServlet:
    def __init__(self, audit: AuditQueryHandler, admin_auth: AdminAuth) -> None:
        self._audit = audit
        self._admin = admin_auth

    def register(self, router: Router) -> None:
        router.add("GET", [AUDIT_PATH], self.on_get)

    async def on_get(self, req: ApiRequest) -> tuple[int, Any]:
        requester = await self._admin.require_admin(req)
        flt = AuditFilter(
            actor=_filter_param(req, "actor"),
            target=_filter_param(req, "target"),
            action=_filter_param(req, "action"),
            outcome=_filter_param(req, "outcome"),
            from_ts=req.query_int("from_ts", maximum=MAX_SAFE_INTEGER),
            to_ts=req.query_int("to_ts", maximum=MAX_SAFE_INTEGER),
        )
        limit = req.query_int("limit", DEFAULT_QUERY_LIMIT, minimum=1, maximum=MAX_QUERY_LIMIT)
        assert limit is not None
        entries, next_token = await self._audit.query(requester, flt, req.query("from"), limit)
        out: dict[str, Any] = {"entries": entries}
        if next_token is not None:
            out["next_batch"] = next_token
        return 200, out
