"""The media repository: upload checks (type, size, quota, scan), reserved ids from
``/v1/create``, download lookups (quarantine, pending uploads) and cached thumbnails.

A file becomes downloadable only after it is complete, hashed and scanned: it is
staged in ``<media_dir>/tmp``, the scan hook runs on the staged copy, and only then is
it handed to the store and its metadata row written.

Thumbnails are only made at the configured ``thumbnail_sizes`` (a request maps to one
of them), on threads, a few at a time, one generation per (media, size) however many
clients ask at once; so a media has at most ``len(thumbnail_sizes)`` cached thumbnails,
counted in its owner's quota and dropped with it (quarantine, delete).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import secrets
import string
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.python import failure

from homeserver.clock import Clock
from homeserver.config.model import MediaConfig, ThumbnailSize
from homeserver.http.errors import Codes, MatrixError
from homeserver.media import thumbnailer
from homeserver.media.backends import MediaBackend
from plugins.media_scan import base_type
from storage.stores.media import MediaInfo, MediaStore, ThumbnailInfo

logger = logging.getLogger(__name__)

MEDIA_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}\Z")
_ID_ALPHABET = string.ascii_letters
_CHUNK = 1024 * 1024
MAX_WAIT_MS = 60_000
# Thumbnails decoded at once: each holds a thread and a core for up to a second or so.
THUMBNAIL_CONCURRENCY = 2


def not_found(msg: str = "Not found") -> MatrixError:
    return MatrixError(404, msg, Codes.NOT_FOUND)


@dataclass(frozen=True)
class StagedFile:
    path: str
    size: int
    sha256: str


def media_key(media_id: str) -> str:
    """``local/ab/cd/efgh...``: fans files out over directories (media ids are validated)."""
    return f"local/{media_id[:2]}/{media_id[2:4]}/{media_id[4:]}"


def thumbnail_key(media_id: str, width: int, height: int, method: str) -> str:
    return f"thumbnails/{media_id[:2]}/{media_id[2:4]}/{media_id[4:]}/{width}-{height}-{method}"


class MediaHandler:
    def __init__(self, server_name: str, config: MediaConfig, clock: Clock, store: MediaStore,
                 backend: MediaBackend, scan: Any) -> None:
        """``scan(path, content_type, sha256) -> reason | None`` is the plugin hook; it is
        called on a thread."""
        self.server_name = server_name
        self.config = config
        self._clock = clock
        self._store = store
        self.backend = backend
        self._scan = scan
        self._staging = os.path.join(config.media_dir, "tmp")
        os.makedirs(self._staging, exist_ok=True)
        self._uploading: set[str] = set()
        self._waiters: dict[str, list[defer.Deferred[None]]] = {}
        # (media id, width, height, method) being generated -> callers waiting for it.
        self._generating: dict[tuple[str, int, int, str], list[defer.Deferred[tuple[bytes, str]]]] = {}
        self._thumbnail_slots = defer.DeferredSemaphore(THUMBNAIL_CONCURRENCY)
        # Other servers' media (homeserver/media/remote.py RemoteMediaCache): set when
        # federation is enabled; None means remote media is never fetched.
        self.remote: Any = None

    # -- upload ---------------------------------------------------------------------

    def _type_allowed(self, content_type: str) -> bool:
        return any(fnmatch.fnmatchcase(content_type, p) for p in self.config.allowed_content_types)

    def check_content_type(self, raw: str | None) -> str:
        """The stored type (parameters dropped); 403 if the allow-list refuses it."""
        ctype = base_type(raw or "application/octet-stream")
        if not re.fullmatch(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", ctype):
            raise MatrixError(400, "Invalid Content-Type", Codes.INVALID_PARAM)
        if not self._type_allowed(ctype):
            raise MatrixError(403, "This server does not accept this type of file", Codes.FORBIDDEN)
        return ctype

    async def _check_quota(self, owner: str, adding: int) -> None:
        used = await self._store.used_bytes(owner)
        if used + adding > self.config.user_quota:
            raise MatrixError(403, "Media storage quota exceeded", Codes.FORBIDDEN)

    def _stage(self, content: BinaryIO) -> StagedFile:
        """Copy the request body (memory or temp file) to a staging file, hashing it."""
        content.seek(0)
        digest = hashlib.sha256()
        size = 0
        fd, path = tempfile.mkstemp(dir=self._staging, prefix="up-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := content.read(_CHUNK):
                    size += len(chunk)
                    if size > self.config.max_upload_size:
                        raise MatrixError(413, "Upload too large", Codes.TOO_LARGE)
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            os.unlink(path)
            raise
        return StagedFile(path, size, digest.hexdigest())

    async def upload(self, owner: str, content: BinaryIO, content_type: str | None,
                     declared_length: int | None, media_id: str | None = None) -> str:
        """Store an upload (new id, or a reserved one) and return its ``mxc://`` URI."""
        ctype = self.check_content_type(content_type)
        if media_id is not None:
            await self._check_can_fill(media_id, owner)
        if declared_length is not None:
            if declared_length > self.config.max_upload_size:
                raise MatrixError(413, "Upload too large", Codes.TOO_LARGE)
            await self._check_quota(owner, declared_length)
        if media_id is not None:
            self._uploading.add(media_id)
        try:
            staged = await deferToThread(self._stage, content)
            try:
                await self._check_quota(owner, staged.size)
                reason = await deferToThread(self._scan, staged.path, ctype, staged.sha256)
                if reason:
                    logger.info("media upload refused by scanner: %s", reason)
                    raise MatrixError(400, "Bad content", Codes.UNKNOWN)
                new_id = media_id or self._new_media_id()
                await self.backend.store_file(media_key(new_id), staged.path, ctype)
            finally:
                if os.path.exists(staged.path):
                    os.unlink(staged.path)
            if media_id is None:
                await self._store.insert_uploaded(MediaInfo(
                    new_id, owner, ctype, staged.size, staged.sha256, self._clock.time_msec(),
                    None, False))
            elif not await self._store.fill_reserved(media_id, ctype, staged.size, staged.sha256):
                raise MatrixError(409, "Media ID already has content", Codes.CANNOT_OVERWRITE_MEDIA)
        finally:
            if media_id is not None:
                self._uploading.discard(media_id)
        if await self._store.is_hash_quarantined(staged.sha256):
            # Stored (as Synapse) but quarantined by the INSERT/UPDATE: never served.
            logger.warning("upload %s by %s has quarantined content; stored quarantined",
                           new_id, owner)
        self._wake(new_id)
        return f"mxc://{self.server_name}/{new_id}"

    async def scan(self, path: str, content_type: str, sha256: str) -> str | None:
        """The scan hook, on a thread (remote media is scanned as uploads are)."""
        return await deferToThread(self._scan, path, content_type, sha256)

    @staticmethod
    def _new_media_id() -> str:
        return "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))

    async def create(self, owner: str) -> tuple[str, int]:
        """Reserve a media id (``/v1/create``); 429 past ``max_pending_uploads``."""
        now = self._clock.time_msec()
        pending, first_expiry = await self._store.count_pending(owner, now)
        if pending >= self.config.max_pending_uploads:
            retry = max(0, (first_expiry or now) - now)
            raise MatrixError(429, "You have too many uploads pending", Codes.LIMIT_EXCEEDED,
                              headers={"Retry-After": str(retry // 1000 + 1)}, retry_after_ms=retry)
        media_id = self._new_media_id()
        expires = now + int(self.config.unused_expiration * 1000)
        await self._store.reserve(media_id, owner, now, expires)
        return f"mxc://{self.server_name}/{media_id}", expires

    async def _check_can_fill(self, media_id: str, owner: str) -> None:
        """Synapse's order: unknown 404, not the creator 403, has content 409, expired 404."""
        info = await self._store.get(media_id) if MEDIA_ID.match(media_id) else None
        if info is None:
            raise not_found("Unknown media ID")
        if info.owner != owner:
            raise MatrixError(403, "Only the creator of the media ID can upload to it",
                              Codes.FORBIDDEN)
        if info.uploaded or media_id in self._uploading:
            raise MatrixError(409, "Media ID already has content", Codes.CANNOT_OVERWRITE_MEDIA)
        if info.unused_expires_ts is not None and info.unused_expires_ts <= self._clock.time_msec():
            raise not_found("Media ID has expired")

    # -- download -------------------------------------------------------------------

    def _wake(self, media_id: str) -> None:
        for d in self._waiters.pop(media_id, []):
            if not d.called:
                d.callback(None)

    async def _wait_for_upload(self, media_id: str, timeout_ms: int) -> MediaInfo | None:
        """Wait until the upload of ``media_id`` lands (in this process) or the timeout.

        The waiter is registered before the row is read again, so an upload finishing
        between the caller's first read and this wait is not missed.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.setdefault(media_id, []).append(d)
        timer = self._clock.call_later(timeout_ms / 1000, lambda: d.called or d.callback(None))
        try:
            info = await self._store.get(media_id)
            if info is None or info.uploaded:
                return info
            await d
            return await self._store.get(media_id)
        finally:
            if timer.active():
                timer.cancel()
            waiting = self._waiters.get(media_id, [])
            if d in waiting:
                waiting.remove(d)

    async def get_media(self, server_name: str, media_id: str, timeout_ms: int) -> MediaInfo:
        """Uploaded, unquarantined local media, waiting up to ``timeout_ms`` for a reserved
        id to be filled (then 504 ``M_NOT_YET_UPLOADED``). Everything else is 404."""
        if server_name != self.server_name or not MEDIA_ID.match(media_id):
            raise not_found()  # no federation: remote media is never fetched
        info = await self._store.get(media_id)
        if info is not None and not info.uploaded and not info.quarantined:
            expired = (info.unused_expires_ts or 0) <= self._clock.time_msec()
            if expired:
                raise not_found()
            if timeout_ms > 0:
                info = await self._wait_for_upload(media_id, min(timeout_ms, MAX_WAIT_MS))
            if info is not None and not info.uploaded:
                raise MatrixError(504, "Media has not been uploaded yet", Codes.NOT_YET_UPLOADED)
        if info is None or info.quarantined:
            raise not_found()
        return info

    async def open_media(self, info: MediaInfo) -> tuple[BinaryIO, int, Any]:
        opened = await self.backend.open(media_key(info.media_id))
        if opened is None:
            logger.warning("media %s has metadata but no stored file", info.media_id)
            raise not_found()
        return opened

    async def presigned_url(self, info: MediaInfo, content_type: str, disposition: str) -> str | None:
        return await self.backend.presigned_url(media_key(info.media_id), content_type, disposition)

    # -- thumbnails -----------------------------------------------------------------

    async def thumbnail(self, info: MediaInfo, width: int, height: int,
                        method: str) -> tuple[bytes, str]:
        """The thumbnail at the configured size that best serves the request, cached or
        freshly generated; 400 for types we never thumbnail (``application/octet-stream``,
        i.e. encrypted attachments, among them)."""
        if info.content_type not in thumbnailer.THUMBNAILABLE:
            raise MatrixError(400, "Cannot generate thumbnails for this type of media", Codes.UNKNOWN)
        size = thumbnailer.select_size(self.config.thumbnail_sizes, width, height, method)
        cached = await self._store.get_thumbnail(info.media_id, size.width, size.height,
                                                 size.method)
        if cached is not None:
            data = await self.backend.read_bytes(self._thumb_key(info.media_id, size))
            if data is not None:
                return data, cached.content_type
        return await self._generate_once(info, size)

    @staticmethod
    def _thumb_key(media_id: str, size: ThumbnailSize) -> str:
        return thumbnail_key(media_id, size.width, size.height, size.method)

    async def _generate_once(self, info: MediaInfo, size: ThumbnailSize) -> tuple[bytes, str]:
        """Generate (or wait for the generation already running of) one thumbnail, so
        concurrent requests for it decode the source once."""
        key = (info.media_id, size.width, size.height, size.method)
        waiting = self._generating.get(key)
        if waiting is not None:
            d: defer.Deferred[tuple[bytes, str]] = defer.Deferred()
            waiting.append(d)
            return await d
        self._generating[key] = []
        try:
            result = await self._thumbnail_slots.run(
                lambda: defer.ensureDeferred(self._generate(info, size)))
        except BaseException as e:
            for d in self._generating.pop(key, []):
                d.errback(failure.Failure(e))
            raise
        for d in self._generating.pop(key, []):
            d.callback(result)
        return result

    async def _generate(self, info: MediaInfo, size: ThumbnailSize) -> tuple[bytes, str]:
        source = await self.backend.local_path(media_key(info.media_id))
        if source is None:
            raise not_found()
        path, cleanup = source
        try:
            data, ctype, _w, _h = await deferToThread(
                thumbnailer.generate, path, info.content_type, size.width, size.height,
                size.method, self.config.max_image_pixels)
        except thumbnailer.ThumbnailError as e:
            logger.info("thumbnail of %s failed: %s", info.media_id, e)
            raise MatrixError(400, "Failed to generate thumbnail.", Codes.UNKNOWN) from e
        finally:
            await deferToThread(cleanup)
        await self.backend.store_bytes(self._thumb_key(info.media_id, size), data, ctype)
        await self._store.add_thumbnail(info.media_id, ThumbnailInfo(
            size.width, size.height, size.method, ctype, len(data)))
        # Quarantined or deleted while we worked: drop what we just cached.
        current = await self._store.get(info.media_id)
        if current is None or current.quarantined:
            await self._drop_thumbnails(info.media_id)
            raise not_found()
        return data, ctype

    async def _drop_thumbnails(self, media_id: str) -> None:
        """Delete every cached thumbnail of ``media_id`` (files, then rows)."""
        for thumb in await self._store.list_thumbnails(media_id):
            await self.backend.delete(thumbnail_key(media_id, thumb.width, thumb.height,
                                                    thumb.method))
            await self._store.delete_thumbnail(media_id, thumb)

    # -- admin ----------------------------------------------------------------------

    def _check_local(self, server_name: str, media_id: str) -> None:
        if server_name != self.server_name or not MEDIA_ID.match(media_id):
            raise not_found()

    async def quarantine(self, server_name: str, media_id: str, by: str) -> None:
        """Quarantine a media and its content: every media with the same sha256 (now or
        uploaded later) is refused too. Their cached thumbnails are deleted. Another
        server's media is quarantined in the remote media cache."""
        if server_name != self.server_name and self.remote is not None:
            await self.remote.quarantine(server_name, media_id, by)
            return
        self._check_local(server_name, media_id)
        affected = await self._store.quarantine(media_id, by, self._clock.time_msec())
        if affected is None:
            raise not_found()
        for mid in affected:
            await self._drop_thumbnails(mid)

    async def unquarantine(self, server_name: str, media_id: str) -> None:
        """Lift the quarantine of a media and of its content hash."""
        self._check_local(server_name, media_id)
        if not await self._store.unquarantine(media_id):
            raise not_found()

    async def delete(self, server_name: str, media_id: str) -> None:
        """Delete a local media: its file, its thumbnails and its metadata."""
        self._check_local(server_name, media_id)
        if await self._store.get(media_id) is None:
            raise not_found()
        await self._drop_thumbnails(media_id)
        await self.backend.delete(media_key(media_id))
        await self._store.delete_media(media_id)
