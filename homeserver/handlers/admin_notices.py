"""Admin-sent server notices (Synapse's ``send_server_notice``, issue 15), through the
one notices path (homeserver/handlers/server_notices.py). Audited with the target
user only, never the notice's text. The PUT variant's transaction ids are remembered
per admin session in this process (as Synapse's transaction cache), so a retried
request sends one notice.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from homeserver.handlers.admin_media import audit_action
from homeserver.handlers.admin_users import Actor
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.handlers.server_notices import ServerNoticesDisabledError, ServerNoticesHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import split_user_id
from homeserver.lru import LruCache

TXN_CACHE_SIZE = 10_000


class AdminNotices:
    def __init__(self, server_name: str, notices: ServerNoticesHandler,
                 audit: SecurityEventRecorder) -> None:
        self._server_name = server_name
        self._notices = notices
        self._audit = audit
        self._txns: LruCache[tuple[str, str], str] = LruCache(TXN_CACHE_SIZE)
        self._lock = defer.DeferredLock()  # a retry waits for the first attempt

    async def send(self, actor: Actor, user_id: str, content: dict[str, Any],
                   txn_id: str | None = None) -> str:
        """Send ``content`` (``body`` required; ``formatted_body`` kept) to ``user_id``;
        returns the event id."""
        try:
            _, server = split_user_id(user_id)
        except MatrixError as e:
            raise MatrixError(400, "Invalid user id", Codes.INVALID_PARAM) from e
        if server != self._server_name:
            raise MatrixError(400, "Server notices can only be sent to local users",
                              Codes.INVALID_PARAM)
        if not self._notices.enabled:
            raise MatrixError(400, "Server notices are not enabled on this server",
                              Codes.UNKNOWN)
        if txn_id is None:
            return await self._send(actor, user_id, content)
        key = (actor.requester.session_id, txn_id)
        await self._lock.acquire()
        try:
            found = self._txns.get(key)
            if found is not None:
                return found
            event_id = await self._send(actor, user_id, content)
            self._txns.set(key, event_id)
            return event_id
        finally:
            self._lock.release()

    async def _send(self, actor: Actor, user_id: str, content: dict[str, Any]) -> str:
        formatted = content.get("formatted_body") \
            if content.get("format") == "org.matrix.custom.html" else None
        try:
            event_id = await self._notices.send_notice(
                user_id, content["body"],
                formatted_body=formatted if isinstance(formatted, str) else None)
        except ServerNoticesDisabledError as e:
            raise MatrixError(400, "Server notices are not enabled on this server",
                              Codes.UNKNOWN) from e
        if event_id is None:
            raise MatrixError(404, "Unknown or deactivated user", Codes.NOT_FOUND)
        await audit_action(self._audit, actor, "send_server_notice", user_id,
                           user_id=user_id, event_id=event_id)
        return event_id
