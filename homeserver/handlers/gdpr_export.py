"""GDPR data export as the servlets see it: who may read which export, and the audit
of every request and download (issue 13: handlers record, servlets only render). The
export jobs themselves are :class:`homeserver.gdpr.export.ExportJobs`."""

from __future__ import annotations

from typing import Any

from homeserver.auth.requester import Requester
from homeserver.gdpr.export import ExportJobs, ExportStatus
from homeserver.handlers.admin_actions import record_admin_action
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from storage.stores.gdpr_exports import ExportJob
from storage.stores.users import UserStore


class GdprExportHandler:
    def __init__(self, exports: ExportJobs, users: UserStore,
                 events: SecurityEventRecorder) -> None:
        self._exports = exports
        self._users = users
        self._events = events

    async def _is_admin(self, user_id: str) -> bool:
        user = await self._users.get_user(user_id)
        return bool(user is not None and user.is_admin and not user.deactivated)

    async def request_own(self, r: Requester) -> str:
        """Start (or join) an export of the requester's own data; its id."""
        export_id, new = await self._exports.request(r.user_id, r.user_id)
        await self._events.record(
            "gdpr", "success", None, user_id=r.user_id, device_id=r.device_id,
            session_id=r.session_id, action="gdpr_export_request", target=r.user_id,
            details={"export_id": export_id, "new": new})
        return export_id

    async def request_by_admin(self, requester: Requester, user_id: str) -> str:
        """An admin exports a local user's data (404 for an unknown user)."""
        if await self._users.get_user(user_id) is None:
            raise MatrixError(404, "Unknown user", Codes.NOT_FOUND)
        export_id, new = await self._exports.request(user_id, requester.user_id)
        await record_admin_action(self._events, requester,
                                  {"action": "gdpr_export", "user_id": user_id,
                                   "export_id": export_id, "new": new})
        return export_id

    async def status(self, export_id: str, reader: str) -> ExportStatus:
        """The status of an export its subject or an admin may read (404 otherwise)."""
        job = await self._exports.get_readable(export_id, reader, await self._is_admin(reader))
        return await self._exports.status(job)

    async def open_download(self, export_id: str, token: str,
                            reader: str | None) -> tuple[ExportJob, Any, int]:
        """(job, file, size) for a valid single-use link; ``reader`` (an access token's
        user, if one was sent) must be allowed to read the export. Audited either way."""
        try:
            if reader is not None:
                await self._exports.get_readable(export_id, reader,
                                                 await self._is_admin(reader))
            job, f, size = await self._exports.open_download(export_id, token)
        except MatrixError:
            await self._events.record(
                "gdpr", "failure", None, action="gdpr_export_download",
                reason="unknown export or invalid link",
                details={"export_id": export_id[:64]})
            raise
        await self._events.record(
            "gdpr", "success", None, action="gdpr_export_download", target=job.user_id,
            details={"export_id": job.export_id, "size": size})
        return job, f, size
