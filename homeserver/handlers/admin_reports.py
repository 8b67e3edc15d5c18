"""Event, room and user reports for admins (issue 15): list, details, resolve, delete.

Synapse's ``event_reports`` shapes (so synapse-admin works), plus ``kind`` (``event``,
``room`` or ``user``: all three are listed) and the triage state. Details are metadata:
the reported event's id, room, sender and type, the reporter and their reason, never
the event's content. Content is shown only when the deployment opts in
(``admin.reports_show_content: true``) AND the room is not encrypted AND the event is not
redacted; each such read is audited, as are resolutions and deletions.
"""

from __future__ import annotations

from typing import Any

from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.handlers.admin_media import audit_action
from homeserver.handlers.admin_users import Actor
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from storage.stores.events import EventStore
from storage.stores.reports import AdminReport, ReportQuery, ReportStore

NAME = ("m.room.name", "")
ALIAS = ("m.room.canonical_alias", "")
ENCRYPTION = ("m.room.encryption", "")


def _not_found() -> MatrixError:
    return MatrixError(404, "Event report not found", Codes.NOT_FOUND)


class AdminReportsHandler:
    def __init__(self, clock: Clock, store: ReportStore, events: EventStore,
                 creation: EventCreationHandler, audit: SecurityEventRecorder,
                 show_content: bool) -> None:
        self._clock = clock
        self._store = store
        self._events = events
        self._creation = creation
        self._audit = audit
        self._show_content = show_content

    async def _room_state(self, room_id: str | None) -> dict[tuple[str, str], Event]:
        if room_id is None:
            return {}
        try:
            return await self._creation.current_state(room_id, [NAME, ALIAS, ENCRYPTION])
        except MatrixError:  # the room is gone (purged): the report stays readable
            return {}

    @staticmethod
    def _entry(r: AdminReport, event: Event | None,
               state: dict[tuple[str, str], Event]) -> dict[str, Any]:
        rep = r.report
        name = state[NAME].content.get("name") if NAME in state else None
        alias = state[ALIAS].content.get("alias") if ALIAS in state else None
        return {
            "id": rep.id, "kind": rep.kind, "received_ts": rep.received_ts,
            "room_id": rep.room_id, "name": name if isinstance(name, str) else None,
            "canonical_alias": alias if isinstance(alias, str) else None,
            "event_id": rep.event_id,
            "event_type": event.type if event is not None else None,
            "sender": event.sender if event is not None else None,
            "target_user_id": rep.target_user_id,
            "user_id": rep.reporter, "reason": rep.reason, "score": rep.score,
            "resolved": r.resolved_ts is not None, "resolved_by": r.resolved_by,
            "resolved_ts": r.resolved_ts, "resolution": r.resolution,
        }

    async def _render(self, reports: list[AdminReport]) -> list[dict[str, Any]]:
        events = await self._events.get_events(
            r.report.event_id for r in reports if r.report.event_id)
        states: dict[str, dict[tuple[str, str], Event]] = {}
        out = []
        for r in reports:
            room_id = r.report.room_id
            if room_id is not None and room_id not in states:
                states[room_id] = await self._room_state(room_id)
            event = events.get(r.report.event_id) if r.report.event_id else None
            out.append(self._entry(r, event, states.get(room_id or "", {})))
        return out

    async def list_reports(self, q: ReportQuery) -> tuple[list[dict[str, Any]], int]:
        rows, total = await self._store.query_reports(q)
        return await self._render(rows), total

    async def get_report(self, actor: Actor, report_id: int) -> dict[str, Any]:
        """Details; with the opt-in, the event itself for an unencrypted, unredacted
        event (that read is audited: it is the one content an admin can see)."""
        row = await self._store.get_report(report_id)
        if row is None:
            raise _not_found()
        out = (await self._render([row]))[0]
        if not self._show_content or row.report.event_id is None:
            return out
        event = await self._events.get_event(row.report.event_id)
        state = await self._room_state(row.report.room_id)
        if event is None or ENCRYPTION in state or event.type == "m.room.encrypted":
            return out
        if await self._events.get_redaction_ids([event.event_id]):
            return out
        out["event_json"] = {"event_id": event.event_id, "type": event.type,
                             "sender": event.sender, "room_id": event.room_id,
                             "origin_server_ts": event.pdu.get("origin_server_ts"),
                             "content": event.pdu.get("content")}
        await audit_action(self._audit, actor, "read_report_content", row.report.room_id,
                           report_id=report_id, event_id=event.event_id)
        return out

    async def delete_report(self, actor: Actor, report_id: int) -> None:
        if not await self._store.delete_report(report_id):
            raise _not_found()
        await audit_action(self._audit, actor, "delete_report", None, report_id=report_id)

    async def resolve_report(self, actor: Actor, report_id: int,
                             note: str | None) -> dict[str, Any]:
        """Mark resolved (a later resolution replaces the note); the note is the
        admin's own text and is not copied into the audit trail."""
        if not await self._store.resolve_report(report_id, actor.requester.user_id,
                                                self._clock.time_msec(), note):
            raise _not_found()
        await audit_action(self._audit, actor, "resolve_report", None, report_id=report_id)
        row = await self._store.get_report(report_id)
        if row is None:  # deleted in between
            raise _not_found()
        return (await self._render([row]))[0]
