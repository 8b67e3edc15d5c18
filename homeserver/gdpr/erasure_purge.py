"""The erasure purge job: after the grace window, delete what is left of an erased user.

Steps, in order (each idempotent; the job row records the next step and the cursor
inside a batched step, so a crash at any point resumes and finishes):

``plugins``      plugins' ``erase_user_data`` (a failing plugin: retried next run)
``events``       the user's own events stored in their redacted form (content pruned as
                 the room version's redaction rules say; search text, relations and
                 transaction ids of those events deleted)
``member_events`` membership events about the user sent by others (invites, kicks,
                 bans), likewise redacted (their content may carry the user's profile)
``media``        media the user uploaded: files and thumbnails in the media backend, rows
``exports``      the user's data-export archives on disk (rows go with ``account``)
``account``      every other row of the user's (keys, sessions, devices, tokens, receipts,
                 push, to-device, MFA, 3PID binds, reports they filed, profile...)
``audit``        audit entries: the user's identifiers replaced by pseudonyms (chain
                 version 2 keeps verifying; see homeserver/audit/chain.py)
``tombstone``    the users row reduced to the reserved id; the job row keeps only the
                 pseudonym

What stays, and why: the room graph (the user's events, redacted, and the membership
state keyed by their id) because other members' and servers' rooms need it, as in
Synapse; the users and erased_users rows so the id is never registered again.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from homeserver.audit.service import pseudonymise_user, user_pseudonym
from homeserver.clock import Clock
from homeserver.crypto.content import event_location
from homeserver.events.redaction import prune_event_dict
from homeserver.gdpr.archive import ExportDir
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.media.backends import MediaBackend
from homeserver.media.handler import media_key, thumbnail_key
from plugins.host import PluginHost
from storage.stores.erasure import ErasureJob, ErasureStore, OwnEventRow
from storage.stores.events import EventStore
from storage.stores.media import MediaStore

logger = logging.getLogger("parley.gdpr")

STEPS = ("plugins", "events", "member_events", "media", "exports", "account", "audit",
         "tombstone")
BATCH = 200
RUN_EVERY_S = 3600.0
MAX_JOBS_PER_RUN = 20

# (user id, cursor) -> (next cursor, or None when the step is done; items handled)
StepFn = Callable[[str, str | None], Awaitable[tuple[str | None, int]]]


class StepFailed(Exception):
    """A step could not finish now (e.g. a plugin failed); the job is retried later."""


class ErasurePurge:
    """Runs due purge jobs: on a timer, at start-up, and at once when the grace is 0."""

    def __init__(self, clock: Clock, store: ErasureStore, events: EventStore,
                 media: MediaStore, backend: MediaBackend, plugins: PluginHost,
                 audit: SecurityEventRecorder, data_dir: str, batch: int = BATCH,
                 refresh_room: Callable[[str], Awaitable[None]] | None = None) -> None:
        self._clock = clock
        # Rebuilds a room's directory summary (name, topic...) from its current state,
        # which may have been the user's (now redacted) events.
        self._refresh_room = refresh_room
        self._store = store
        self._events = events
        self._media = media
        self._backend = backend
        self._plugins = plugins
        self._audit = audit
        self._exports_root = f"{data_dir}/exports"
        self.batch = batch
        self._loop: LoopingCall | None = None
        self._running: defer.Deferred[Any] | None = None
        self._again = False
        self._steps: dict[str, StepFn] = {
            "plugins": self._step_plugins, "events": self._step_events,
            "member_events": self._step_member_events, "media": self._step_media,
            "exports": self._step_exports, "account": self._step_account,
            "audit": self._step_audit, "tombstone": self._step_tombstone,
        }

    # -- scheduling ----------------------------------------------------------------------

    def start(self, every_s: float = RUN_EVERY_S) -> None:
        """Run now (jobs a stopped process left) and then every ``every_s``."""
        loop = LoopingCall(self.kick)
        loop.clock = self._clock._time  # noqa: SLF001 (the clock's own IReactorTime)
        self._loop = loop
        loop.start(every_s, now=True)

    def kick(self) -> None:
        """Run the due jobs in the background (a run already going runs again after)."""
        if self._running is not None:
            self._again = True
            return
        # In an empty context: not under the request that erased the user (its
        # requester and IP must not end up in the purge's audit entries).
        d = contextvars.Context().run(lambda: defer.ensureDeferred(self.run_due()))

        def done(result: Any) -> None:
            self._running = None
            if isinstance(result, Failure):
                logger.error("erasure purge failed: %s", result.getErrorMessage())
            if self._again:
                self._again = False
                self.kick()

        if not d.called:
            self._running = d
        d.addBoth(done)

    def stop(self) -> defer.Deferred[Any] | None:
        """Stop the timer; a run in progress is returned so shutdown can wait for it."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._running

    async def wait_idle(self) -> None:
        """Wait until no run is in progress (tests, shutdown)."""
        while self._running is not None:
            running = self._running
            await defer.DeferredList([running], consumeErrors=True)
            if self._running is running:
                break

    async def run_due(self) -> int:
        """Run every due job to its end (or until a step fails); returns jobs completed."""
        done = 0
        for job in await self._store.due_jobs(self._clock.time_msec(), MAX_JOBS_PER_RUN):
            done += int(await self.run_job(job))
        return done

    # -- one job -------------------------------------------------------------------------

    async def run_job(self, job: ErasureJob, max_batches: int | None = None) -> bool:
        """Run ``job`` from where it stopped; True once complete. ``max_batches`` stops
        early (tests: a crash half-way)."""
        step, cursor, batches = job.step, job.step_cursor, 0
        user_id = job.user_id
        while step < len(STEPS):
            if max_batches is not None and batches >= max_batches:
                return False
            name = STEPS[step]
            try:
                cursor, items = await self._steps[name](user_id, cursor)
            except Exception as e:
                message = f"{name}: {e}" if isinstance(e, StepFailed) else \
                    f"{name}: {type(e).__name__}"
                logger.warning("erasure job %s stopped at step %s: %s", job.job_id, name,
                               message)
                await self._store.record_error(job.job_id, message, self._clock.time_msec())
                return False
            batches += 1
            if name == "tombstone":
                await self._store.complete(job.job_id, user_id, self._pseudonym(user_id),
                                           self._clock.time_msec())
                return True
            if cursor is None:
                step += 1
            await self._store.record_progress(job.job_id, step, cursor, items,
                                              self._clock.time_msec())
        return True

    def _pseudonym(self, user_id: str) -> str:
        key = self._audit.id_key
        return user_pseudonym(key, user_id) if key is not None else "erased-user"

    # -- steps ---------------------------------------------------------------------------

    async def _step_plugins(self, user_id: str, cursor: str | None) -> tuple[str | None, int]:
        failed = await self._plugins.erase_user_data(user_id)
        if failed:
            raise StepFailed("plugins failed: " + ", ".join(sorted(failed))[:200])
        return None, 0

    async def _redact(self, rows: list[OwnEventRow]) -> None:
        codec = self._events.codec
        pruned = []
        state_rooms: set[str] = set()
        for row in rows:
            pdu = json.loads(codec.open(row.json, event_location(row.event_id)))
            if "state_key" in pdu:
                state_rooms.add(row.room_id)
            text = json.dumps(prune_event_dict(pdu, row.room_version), ensure_ascii=False)
            pruned.append((row.event_id, codec.seal(text, event_location(row.event_id))))
        await self._store.replace_events(pruned)
        if self._refresh_room is not None:
            for room_id in sorted(state_rooms):
                await self._refresh_room(room_id)

    async def _step_events(self, user_id: str, cursor: str | None) -> tuple[str | None, int]:
        rows = await self._store.own_events_after(user_id, int(cursor or 0), self.batch)
        await self._redact(rows)
        return (str(rows[-1].stream_ordering) if len(rows) == self.batch else None), len(rows)

    async def _step_member_events(self, user_id: str,
                                  cursor: str | None) -> tuple[str | None, int]:
        rows = await self._store.member_events_after(user_id, int(cursor or 0), self.batch)
        await self._redact(rows)
        return (str(rows[-1].stream_ordering) if len(rows) == self.batch else None), len(rows)

    async def _step_media(self, user_id: str, cursor: str | None) -> tuple[str | None, int]:
        # Deleted rows drop out of the query: no cursor needed, a rerun starts over.
        ids = await self._store.media_ids(user_id, self.batch)
        for media_id in ids:
            for thumb in await self._media.list_thumbnails(media_id):
                await self._backend.delete(thumbnail_key(media_id, thumb.width, thumb.height,
                                                         thumb.method))
            await self._backend.delete(media_key(media_id))
            await self._media.delete_media(media_id)
        return ("more" if len(ids) == self.batch else None), len(ids)

    async def _step_exports(self, user_id: str, cursor: str | None) -> tuple[str | None, int]:
        ids = await self._store.export_ids(user_id)
        for export_id in ids:
            await ExportDir(self._exports_root, export_id).remove_all()
        return None, len(ids)

    async def _step_account(self, user_id: str, cursor: str | None) -> tuple[str | None, int]:
        return None, await self._store.delete_account_rows(user_id)

    async def _step_audit(self, user_id: str, cursor: str | None) -> tuple[str | None, int]:
        key = self._audit.id_key
        if key is None:
            logger.warning("no audit key: audit entries about an erased user are kept "
                           "until retention deletes them")
            return None, 0
        report = await pseudonymise_user(self._audit.store, key, user_id)
        if report.kept_v1:
            logger.info("erasure: %d audit entries from before chain version 2 keep their "
                        "identifiers until retention deletes them", report.kept_v1)
        return None, report.replaced

    async def _step_tombstone(self, user_id: str, cursor: str | None) -> tuple[str | None, int]:
        await self._store.tombstone_user(user_id)
        # Named by its pseudonym only: this entry is written after the audit step.
        await self._audit.record("erasure_purge", "success", None,
                                 target=self._pseudonym(user_id))
        return None, 1
