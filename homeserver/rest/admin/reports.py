"""Reports admin API: Synapse's ``/_synapse/admin/v1/event_reports`` (list, details,
delete) and ours, ``/_parley/admin/v1/event_reports/{reportId}/resolve``. Event, room and
user reports are all listed, each with its ``kind``. Metadata only: the reported content
is shown only with ``admin.reports_show_content`` (see the handler).
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.admin_reports import AdminReportsHandler
from homeserver.handlers.admin_users import Actor
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.rest.admin._auth import AdminAuth, admin_paths
from storage.stores.reports import ReportQuery

PA = "/_parley/admin/v1"
MAX_LIST_LIMIT = 1000
MAX_OFFSET = 10**9
MAX_FILTER = 255
MAX_REPORT_ID = 2**53 - 1
KINDS = ("event", "room", "user")

RESOLVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"resolution": {"type": ["string", "null"], "maxLength": 1000}},
    "additionalProperties": False,
}


def _report_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 16 or int(raw) > MAX_REPORT_ID:
        raise MatrixError(400, "The report_id parameter must be a string representing a "
                          "positive integer.", Codes.INVALID_PARAM)
    return int(raw)


def _filter(req: ApiRequest, name: str) -> str | None:
    value = req.query(name)
    if value is not None and len(value) > MAX_FILTER:
        raise MatrixError(400, f"{name} is too long", Codes.INVALID_PARAM)
    return value or None


class AdminReportServlets:
    def __init__(self, handler: AdminReportsHandler, admin_auth: AdminAuth) -> None:
        self._h = handler
        self._admin = admin_auth

    def register(self, router: Router) -> None:
        router.add("GET", admin_paths("/event_reports"), self.on_list)
        router.add("GET", admin_paths("/event_reports/{reportId}"), self.on_get)
        router.add("DELETE", admin_paths("/event_reports/{reportId}"), self.on_delete)
        router.add("POST", f"{PA}/event_reports/{{reportId}}/resolve", self.on_resolve,
                   body_schema=RESOLVE_SCHEMA)

    async def _actor(self, req: ApiRequest) -> Actor:
        requester, role = await self._admin.require_role(req)
        return Actor(requester, role, req.client)

    async def on_list(self, req: ApiRequest) -> tuple[int, Any]:
        await self._actor(req)
        offset = req.query_int("from", 0, maximum=MAX_OFFSET)
        limit = req.query_int("limit", 100, minimum=1, maximum=MAX_LIST_LIMIT)
        direction = req.query("dir", "b")
        if direction not in ("f", "b"):
            raise MatrixError(400, "Unknown direction", Codes.INVALID_PARAM)
        kind = _filter(req, "kind")
        if kind is not None and kind not in KINDS:
            raise MatrixError(400, "kind must be event, room or user", Codes.INVALID_PARAM)
        resolved = req.query("resolved")
        if resolved is not None:
            resolved_flag: bool | None = req.query_bool("resolved")
        else:
            resolved_flag = None
        assert offset is not None and limit is not None
        q = ReportQuery(offset=offset, limit=limit, newest_first=direction == "b",
                        room_id=_filter(req, "room_id"), reporter=_filter(req, "user_id"),
                        sender=_filter(req, "event_sender_user_id"), kind=kind,
                        resolved=resolved_flag)
        reports, total = await self._h.list_reports(q)
        out: dict[str, Any] = {"event_reports": reports, "total": total}
        if offset + len(reports) < total:
            out["next_token"] = offset + len(reports)
        return 200, out

    async def on_get(self, req: ApiRequest, reportId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        return 200, await self._h.get_report(actor, _report_id(reportId))

    async def on_delete(self, req: ApiRequest, reportId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        await self._h.delete_report(actor, _report_id(reportId))
        return 200, {}

    async def on_resolve(self, req: ApiRequest, reportId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        return 200, await self._h.resolve_report(actor, _report_id(reportId),
                                                 req.body.get("resolution"))
