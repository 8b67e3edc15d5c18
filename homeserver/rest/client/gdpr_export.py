"""GDPR data export, under ``/_parley/client/v1/export`` (README: "Data export").

- ``POST /export`` behind UIA (password; plus a second factor once enrolled): starts an
  export of the caller's data; answers ``{"export_id"}`` (a second request while one is
  in progress answers that one's id).
- ``GET /export/{exportId}``: ``status`` (``queued|running|complete|failed``), progress
  per section, and when complete ``download_url`` (a fresh, single-use link valid until
  the archive expires; reading the status again replaces it). Another user's export is
  404, unless the caller is a server admin.
- ``GET /export/{exportId}/download?token=...``: the zip, streamed from disk. The token
  is the credential (an access token is optional; if one is given, it must belong to
  the export's subject or an admin).

Every request and every download (or refused download) is audited.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from homeserver.auth.ui_auth import PASSWORD, UserInteractiveAuth
from homeserver.gdpr.export import ExportStatus
from homeserver.handlers.gdpr_export import GdprExportHandler
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest, StreamedBody

PREFIX = "/_parley/client/v1/export"
UIA_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"auth": {"type": "object"}}}


def status_json(status: ExportStatus, public_baseurl: str) -> dict[str, Any]:
    """The status document (client and admin API)."""
    job = status.job
    sections = {s.section: {"items": s.items, "done": s.done} for s in status.sections}
    out: dict[str, Any] = {
        "export_id": job.export_id,
        "user_id": job.user_id,
        "status": job.status,
        "created_ts": job.created_ts,
        "progress": {"sections_done": sum(1 for s in status.sections if s.done),
                     "sections_total": len(status.sections), "sections": sections},
    }
    if job.finished_ts is not None:
        out["finished_ts"] = job.finished_ts
    if job.error is not None:
        out["error"] = job.error
    if job.status == "complete":
        out["archive_size"] = job.archive_size
        out["expires_ts"] = job.expires_ts
    if status.link_token is not None:
        out["download_url"] = (f"{public_baseurl.rstrip('/')}{PREFIX}/{quote(job.export_id)}"
                               f"/download?token={quote(status.link_token)}")
        out["download_expires_ts"] = status.link_expires_ts
    return out


class GdprExportServlets:
    def __init__(self, exports: GdprExportHandler, uia: UserInteractiveAuth,
                 public_baseurl: str) -> None:
        self._exports = exports
        self._uia = uia
        self._baseurl = public_baseurl

    def register(self, router: Router) -> None:
        router.add("POST", PREFIX, self.on_request, body_schema=UIA_SCHEMA)
        router.add("GET", PREFIX + "/{exportId}", self.on_status)
        router.add("GET", PREFIX + "/{exportId}/download", self.on_download, auth="optional")

    async def on_request(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        _, session = await self._uia.check(req.body, [[PASSWORD]], req.raw.path.decode(),
                                           "POST", user_id=r.user_id)
        await self._uia.consume(session)  # spent before acting
        export_id = await self._exports.request_own(r)
        return 200, {"export_id": export_id}

    async def on_status(self, req: ApiRequest, exportId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        return 200, status_json(await self._exports.status(exportId, r.user_id), self._baseurl)

    async def on_download(self, req: ApiRequest, exportId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.requester  # an access token was sent: it must be allowed to read this
        job, f, size = await self._exports.open_download(
            exportId, req.query("token") or "", r.user_id if r is not None else None)
        req.raw.setHeader("Content-Type", "application/zip")
        req.raw.setHeader("Content-Disposition",
                          f'attachment; filename="parley-export-{job.export_id}.zip"')
        return 200, StreamedBody(f, size)

