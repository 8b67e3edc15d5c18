"""The GDPR data export job: everything the server holds about a user, as a zip.

A request (the user behind UIA, or an admin for any user) records a job row and a
cursor row per section and answers the export id at once; the job then runs in the
background, one section after another, each in batches (:data:`SECTIONS`). After every
batch the part file is written (:mod:`homeserver.gdpr.archive`) and then the section's
cursor advances, so a job stopped by a restart resumes from its cursors when the next
process starts (:meth:`ExportJobs.resume_pending`). Run exports on one worker: every
process resumes the unfinished jobs it finds.

What goes in: profile, account data, devices (ids, names, last seen; no private keys
exist server-side), memberships, the user's own events (as clients see them, with
redactions applied and without bundled aggregations, which could carry other users'
events), media metadata and the uploaded files as stored, audit entries about the user
(fields describing another actor, e.g. an admin's IP, are left out), push rules,
pushers (without pushkeys, which are tokens) and each plugin's part
(``PluginHost.export_user_data``). Nothing of another user's private data: their
messages are not included.

Once complete, the archive lives for ``gdpr.export_link_lifetime``; each status read
hands out a fresh download link whose random token (stored as its SHA-256) is valid
once and until the archive expires; a newer link replaces the older. A periodic
cleanup deletes expired archives, parts and rows.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as default_reactor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread

from homeserver.audit.service import entry_json
from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.gdpr.archive import MANIFEST, ArchiveWriter, ExportDir, open_archive
from homeserver.handlers.client_events import ClientEventSerializer
from homeserver.handlers.push_rules import PushRulesHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.media.backends import MediaBackend
from homeserver.media.handler import media_key
from plugins.host import PluginHost
from storage.database import Database
from storage.stores.all_stores import Stores
from storage.stores.consent import ConsentStore
from storage.stores.gdpr_exports import ExportJob, GdprExportStore, SectionState
from storage.stores.security_events import SecurityEvent

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
MAX_CONCURRENT_JOBS = 2
STOP_WAIT_S = 5.0
FAILED_MESSAGE = "The export failed; see the server log"
_ID_CHARS = string.ascii_letters + string.digits
MAX_EXPORT_ID_LENGTH = 64
MAX_TOKEN_LENGTH = 128

# (section, kind): "single" sections are one JSON document, "batched" ones a part per
# batch. Order is the order the job runs them in.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("profile", "single"), ("account_data", "single"), ("devices", "single"),
    ("memberships", "single"), ("push_rules", "single"), ("pushers", "single"),
    ("consent", "single"), ("events", "batched"), ("media", "batched"), ("audit", "batched"),
    ("plugins", "single"),
)
SECTION_NAMES = [s for s, _ in SECTIONS]
_KIND = dict(SECTIONS)

# A batch: (entries to write, the new cursor, whether the section is finished).
Batch = tuple[Any, str | None, bool]


class _Stopped(Exception):
    """The process is stopping: leave the job as it is, to be resumed."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def not_found() -> MatrixError:
    return MatrixError(404, "Unknown export", Codes.NOT_FOUND)


@dataclass(frozen=True)
class ExportStatus:
    job: ExportJob
    sections: list[SectionState]
    link_token: str | None  # a fresh single-use token (complete exports only)
    link_expires_ts: int | None


class ExportJobs:
    def __init__(self, server_name: str, clock: Clock, store: GdprExportStore, stores: Stores,
                 media: MediaBackend, plugins: PluginHost, push_rules: PushRulesHandler,
                 data_dir: str, link_lifetime_s: float) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._stores = stores
        self._media = media
        self._plugins = plugins
        self._push_rules = push_rules
        self._root = f"{data_dir}/exports"
        self._lifetime_ms = int(link_lifetime_s * 1000)
        # No aggregations: a thread summary would carry another user's event.
        self._serializer = ClientEventSerializer(clock, stores.events)
        self._slots = defer.DeferredSemaphore(MAX_CONCURRENT_JOBS)
        self._running: dict[str, defer.Deferred[None]] = {}
        self._stopping = False
        self._stop_waiters: list[defer.Deferred[None]] = []
        self.batch_size = BATCH_SIZE
        # Test hook: awaited before every batch with (export id, section, batch number).
        self.before_batch: Callable[[str, str, int], Awaitable[None]] | None = None
        # Consent records (schema 0038; set by build_gdpr_export).
        self.consents: ConsentStore | None = None

    # -- requests ------------------------------------------------------------------------

    async def request(self, user_id: str, requested_by: str) -> tuple[str, bool]:
        """Start an export of ``user_id``; returns (export id, whether it is new). A user
        has one export in progress at a time: asking again answers that one."""
        active = await self._store.active_job_for_user(user_id)
        if active is not None:
            return active.export_id, False
        export_id = "".join(secrets.choice(_ID_CHARS) for _ in range(24))
        await self._store.create_job(export_id, user_id, requested_by, SECTION_NAMES,
                                     self._clock.time_msec())
        self._start(export_id)
        return export_id, True

    async def get_readable(self, export_id: str, reader: str, reader_is_admin: bool) -> ExportJob:
        """The job if ``reader`` may see it (its subject, or an admin), else 404."""
        if not export_id or len(export_id) > MAX_EXPORT_ID_LENGTH:
            raise not_found()
        job = await self._store.get_job(export_id)
        if job is None or (job.user_id != reader and not reader_is_admin):
            raise not_found()
        if job.expires_ts is not None and job.expires_ts <= self._clock.time_msec():
            raise not_found()  # expired; the cleanup deletes it
        return job

    async def status(self, job: ExportJob) -> ExportStatus:
        """Progress, and for a complete export a fresh download token (replacing any
        earlier one: only the newest link works, once)."""
        sections = await self._store.sections(job.export_id)
        token = expires = None
        if job.status == "complete" and job.expires_ts is not None:
            token = secrets.token_urlsafe(32)
            expires = job.expires_ts
            if not await self._store.set_token(job.export_id, hash_token(token), expires):
                token = expires = None
        return ExportStatus(job, sections, token, expires)

    async def open_download(self, export_id: str, token: str) -> tuple[ExportJob, Any, int]:
        """Spend the link's token and open the archive for streaming; 404 for an unknown
        export or a wrong, used or expired token (which are not told apart)."""
        if (not export_id or len(export_id) > MAX_EXPORT_ID_LENGTH or not token
                or len(token) > MAX_TOKEN_LENGTH):
            raise not_found()
        job = await self._store.get_job(export_id)
        if job is None or job.status != "complete":
            raise not_found()
        if not await self._store.consume_token(export_id, hash_token(token),
                                               self._clock.time_msec()):
            raise not_found()
        try:
            f, size = await deferToThread(open_archive, ExportDir(self._root, export_id).archive)
        except FileNotFoundError as e:
            raise not_found() from e
        return job, f, size

    # -- lifecycle -----------------------------------------------------------------------

    async def resume_pending(self) -> int:
        """At start-up: pick up every job a stopped process left queued or running."""
        jobs = await self._store.unfinished_jobs()
        for job in jobs:
            logger.info("resuming GDPR export %s", job.export_id)
            self._start(job.export_id)
        return len(jobs)

    def wait_stopping(self) -> defer.Deferred[None]:
        """Fires when :meth:`stop` begins (tests park a job on it)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._stopping:
            d.callback(None)
        else:
            self._stop_waiters.append(d)
        return d

    async def stop(self) -> None:
        """Stop taking batches; running jobs stay 'running' and resume at next start."""
        self._stopping = True
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)
        if not self._running:
            return
        d = defer.DeferredList(list(self._running.values()), consumeErrors=True)
        d.addTimeout(STOP_WAIT_S, default_reactor)
        try:
            await d
        except defer.TimeoutError:
            logger.warning("GDPR exports still running at shutdown: %s", list(self._running))

    async def cleanup(self) -> int:
        """Delete expired exports: archive, parts and rows. Returns how many."""
        jobs = await self._store.expired_jobs(self._clock.time_msec())
        for job in jobs:
            if job.export_id in self._running:
                continue
            await ExportDir(self._root, job.export_id).remove_all()
            await self._store.delete_job(job.export_id)
        return len(jobs)

    def _start(self, export_id: str) -> None:
        if export_id in self._running or self._stopping:
            return
        d = self._slots.run(lambda: defer.ensureDeferred(self._run(export_id)))
        self._running[export_id] = d
        d.addBoth(lambda _: self._running.pop(export_id, None))

    # -- the job -------------------------------------------------------------------------

    def _check_stopping(self) -> None:
        if self._stopping:
            raise _Stopped()

    async def _run(self, export_id: str) -> None:
        try:
            self._check_stopping()
            job = await self._store.get_job(export_id)
            if job is None or job.status not in ("queued", "running"):
                return
            await self._store.set_status(export_id, "running")
            export_dir = ExportDir(self._root, export_id)
            states = {s.section: s for s in await self._store.sections(export_id)}
            for section in SECTION_NAMES:
                state = states.get(section)
                if state is None or state.done:
                    continue
                await self._run_section(job, export_dir, state)
            self._check_stopping()
            size = await self._assemble(job, export_dir)
            now = self._clock.time_msec()
            await self._store.complete(export_id, size, now, now + self._lifetime_ms)
            logger.info("GDPR export %s complete (%d bytes)", export_id, size)
        except _Stopped:
            logger.info("GDPR export %s paused by shutdown; it resumes at next start",
                        export_id)
        except Exception:
            if self._stopping:  # e.g. the database closed under it: resume later
                logger.info("GDPR export %s interrupted by shutdown", export_id)
                return
            logger.exception("GDPR export %s failed", export_id)
            try:
                now = self._clock.time_msec()
                await self._store.fail(export_id, FAILED_MESSAGE, now, now + self._lifetime_ms)
                await ExportDir(self._root, export_id).remove_all()
            except Exception:
                logger.exception("could not record the failure of GDPR export %s", export_id)

    async def _run_section(self, job: ExportJob, export_dir: ExportDir,
                           state: SectionState) -> None:
        cursor, batch_no = state.cursor, state.batches
        while True:
            batch_no += 1
            if self.before_batch is not None:
                await self.before_batch(job.export_id, state.section, batch_no)
            self._check_stopping()
            entries, cursor, done = await self._batch(job.user_id, state.section, cursor)
            await export_dir.write_part(state.section, batch_no, entries)
            self._check_stopping()
            count = len(entries) if isinstance(entries, list) else 1
            await self._store.advance_section(job.export_id, state.section, cursor, count, done)
            if done:
                return

    async def _batch(self, user_id: str, section: str, cursor: str | None) -> Batch:
        single: dict[str, Callable[[str], Awaitable[Any]]] = {
            "profile": self._profile, "account_data": self._account_data,
            "devices": self._devices, "memberships": self._memberships,
            "push_rules": self._push_rules.get_ruleset, "pushers": self._pushers,
            "plugins": self._plugins.export_user_data, "consent": self._consents,
        }
        if section in single:
            return await single[section](user_id), None, True
        if section == "events":
            return await self._events(user_id, int(cursor or 0))
        if section == "media":
            return await self._media_batch(user_id, cursor or "")
        if section == "audit":
            return await self._audit(user_id, int(cursor or 0))
        raise ValueError(f"unknown export section {section!r}")

    async def _profile(self, user_id: str) -> dict[str, Any]:
        user = await self._stores.users.get_user(user_id)
        fields = await self._stores.profiles.get_active_profile_fields(user_id)
        if fields is None:
            profile = await self._stores.profiles.get_profile(user_id)
            fields = {} if profile is None else {
                k: v for k, v in (("displayname", profile.displayname),
                                  ("avatar_url", profile.avatar_url)) if v is not None}
        out: dict[str, Any] = {"user_id": user_id, "profile": fields}
        if user is not None:
            out.update(created_ts=user.created_ts, is_admin=user.is_admin,
                       is_guest=user.is_guest, deactivated=user.deactivated)
        return out

    async def _consents(self, user_id: str) -> list[dict[str, Any]]:
        """The privacy policy versions the user accepted, and when."""
        records = await self.consents.list_consents(user_id) if self.consents else []
        return [{"version": r.version, "accepted_ts": r.accepted_ts} for r in records]

    async def _account_data(self, user_id: str) -> dict[str, Any]:
        global_data, rooms = await self._stores.account_data.get_updated_account_data(user_id, 0)
        return {"global": global_data, "rooms": rooms}

    async def _devices(self, user_id: str) -> list[dict[str, Any]]:
        return [{"device_id": d.device_id, "display_name": d.display_name,
                 "created_ts": d.created_ts, "last_seen_ts": d.last_seen_ts,
                 "last_seen_ip": d.last_seen_ip, "last_seen_user_agent": d.last_seen_user_agent}
                for d in await self._stores.devices.list_devices(user_id)]

    async def _memberships(self, user_id: str) -> list[dict[str, Any]]:
        records = await self._stores.room_members.rooms_for_user(
            user_id, ("join", "invite", "knock", "leave", "ban"), include_forgotten=True)
        return [{"room_id": m.room_id, "membership": m.membership, "event_id": m.event_id,
                 "forgotten": m.forgotten} for m in records]

    async def _pushers(self, user_id: str) -> list[dict[str, Any]]:
        # The pushkey is a push token for the device: left out.
        return [{"app_id": p.app_id, "kind": p.kind, "app_display_name": p.app_display_name,
                 "device_display_name": p.device_display_name, "profile_tag": p.profile_tag,
                 "lang": p.lang, "data": p.data, "device_id": p.device_id,
                 "created_ts": p.created_ts}
                for p in await self._stores.pushers.get_pushers(user_id)]

    async def _events(self, user_id: str, after: int) -> Batch:
        rows = await self._store.own_event_ids(user_id, after, self.batch_size)
        if not rows:
            return [], str(after), True
        found = await self._stores.events.get_events(eid for eid, _ in rows)
        events = [found[eid] for eid, _ in rows if eid in found]
        serialized = await self._serializer.serialize(events, user_id, None)
        return serialized, str(rows[-1][1]), len(rows) < self.batch_size

    async def _media_batch(self, user_id: str, after: str) -> Batch:
        rows = await self._store.media_of_owner(user_id, after, self.batch_size)
        entries = [{"media_id": m.media_id, "mxc": f"mxc://{self._server_name}/{m.media_id}",
                    "content_type": m.content_type, "size": m.size, "sha256": m.sha256,
                    "created_ts": m.created_ts, "quarantined": m.quarantined,
                    "file": f"media/files/{m.media_id}" if m.size is not None else None}
                   for m in rows]
        cursor = rows[-1].media_id if rows else after
        return entries, cursor, len(rows) < self.batch_size

    async def _audit(self, user_id: str, after: int) -> Batch:
        rows = await self._store.audit_entries_about(user_id, after, self.batch_size)
        cursor = str(rows[-1].seq) if rows else str(after)
        return [_audit_entry(ev, user_id) for ev in rows], cursor, len(rows) < self.batch_size

    async def _assemble(self, job: ExportJob, export_dir: ExportDir) -> int:
        """The zip from the parts (started afresh if a previous attempt was cut off)."""
        sections = {s.section: s for s in await self._store.sections(job.export_id)}
        writer = ArchiveWriter(export_dir)
        await writer.open()
        try:
            missing: list[str] = []
            for name in SECTION_NAMES:
                state = sections[name]
                if _KIND[name] == "single":
                    await writer.add_part(name, 1, f"{name}.json")
                    continue
                for batch in range(1, state.batches + 1):
                    await writer.add_part(name, batch, f"{name}/{batch:06d}.json")
                    if name == "media":
                        for entry in await export_dir.read_part(name, batch):
                            self._check_stopping()
                            if entry["file"] and not await writer.add_media(
                                    entry["media_id"], self._open_media):
                                missing.append(entry["media_id"])
            await writer.add_json(MANIFEST, {
                "export_id": job.export_id, "user_id": job.user_id,
                "server_name": self._server_name, "requested_ts": job.created_ts,
                "created_ts": self._clock.time_msec(),
                "sections": {n: {"items": sections[n].items, "batches": sections[n].batches}
                             for n in SECTION_NAMES},
                "media_files_missing": missing,
            })
            return await writer.finish()
        except BaseException:
            await writer.abort()
            raise

    async def _open_media(self, media_id: str) -> Any:
        return await self._media.local_path(media_key(media_id))


def _audit_entry(ev: SecurityEvent, user_id: str) -> dict[str, Any]:
    """An audit entry as exported: another actor's device, session, IP and user agent
    (e.g. an admin acting on this user) are theirs, not this user's, so they go."""
    entry = entry_json(ev)
    if ev.user_id != user_id:
        entry["actor"] = {"user_id": ev.user_id}
    entry.pop("prev_hash", None)
    entry.pop("hash", None)
    return entry


CLEANUP_INTERVAL_S = 600


def build_gdpr_export(config: Config, clock: Clock, db: Database, stores: Stores,
                      media: MediaBackend, plugins: PluginHost,
                      push_rules: PushRulesHandler) -> ExportJobs:
    """The export jobs from the config (the composition root gains a line)."""
    jobs = ExportJobs(config.server_name, clock, GdprExportStore(db), stores, media, plugins,
                      push_rules, config.data_dir, config.gdpr.export_link_lifetime_s)
    jobs.consents = ConsentStore(db)
    return jobs


def start_cleanup(exports: ExportJobs, clock: Clock) -> LoopingCall:
    """The periodic deletion of expired archives (every 10 minutes, on ``clock``)."""
    def run() -> None:
        d = defer.ensureDeferred(exports.cleanup())
        d.addErrback(lambda f: logger.error("GDPR export cleanup failed: %s",
                                            f.getErrorMessage()))

    loop = LoopingCall(run)
    loop.clock = clock._time  # noqa: SLF001 (the clock's own IReactorTime)
    loop.start(CLEANUP_INTERVAL_S, now=False)
    return loop
