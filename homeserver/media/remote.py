"""Other servers' media for local clients: fetched over federation on first request,
then served from a size-bounded cache.

The fetch itself is a hook set by federation (federation/media_servlets.py: the
authenticated federation media endpoint, then the legacy one), so nothing here knows
about federation. A file is at most ``media.max_upload_size`` bytes (larger is 502
``M_TOO_LARGE``, nothing kept); it is hashed and scanned like an upload before it is
cached, and content whose sha256 is quarantined is refused (404) whatever server or id
it comes under. The cache holds at most ``media.remote_cache_max_bytes``: past that,
the least recently served files are evicted. One fetch per media however many clients
ask at once.

Thumbnails: a request maps to one of ``media.thumbnail_sizes`` (as local thumbnails),
which is asked from the remote server once and cached (checked like a file: type, hash,
scan), in the same size bound and the same least-recently-served eviction as files.
Thumbnails of media quarantined here are refused and dropped. The admin purge
(``purge``) drops files and thumbnails not served since a date; quarantined media keep
their (file-less) row, so the quarantine outlives purges and evictions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.python import failure

from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from homeserver.media import thumbnailer
from homeserver.media.handler import MEDIA_ID, MediaHandler, not_found
from plugins.media_scan import base_type
from storage.stores.remote_media import (
    CacheEntry,
    RemoteMediaInfo,
    RemoteMediaStore,
    RemoteThumbnailInfo,
)

logger = logging.getLogger(__name__)

# (server, media id, max bytes, timeout ms) -> (content type, bytes); raises MatrixError.
RemoteFetch = Callable[[str, str, int, int], Awaitable[tuple[str, bytes]]]
# (server, media id, width, height, method, timeout ms) -> (content type, bytes).
RemoteThumbnail = Callable[[str, str, int, int, str, int], Awaitable[tuple[str, bytes]]]
MAX_THUMBNAIL_BYTES = 8 * 1024 * 1024
EVICT_BATCH = 100
# Files being fetched at once (each is held in memory, up to max_upload_size).
FETCH_CONCURRENCY = 4
_TOUCH_EVERY_MS = 60_000
# What a thumbnail may be (the spec's list): anything else could carry script.
THUMBNAIL_TYPES = frozenset({"image/png", "image/apng", "image/jpeg", "image/gif",
                             "image/webp"})
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,127}/[a-z0-9!#$&^_.+-]{1,127}")


def clean_type(raw: str | None) -> str:
    """A remote server's content type, parameters dropped; junk becomes
    ``application/octet-stream``."""
    ctype = base_type(raw or "")
    return ctype if _MEDIA_TYPE.fullmatch(ctype) else "application/octet-stream"


def remote_key(server_name: str, media_id: str) -> str:
    """``remote/<server>/ab/cd/efgh``: the server name is validated by the caller (no
    ``/``), and ``..`` cannot be one (it has no dot-only form that passes)."""
    return f"remote/{server_name}/{media_id[:2]}/{media_id[2:4]}/{media_id[4:]}"


def remote_thumbnail_key(t: RemoteThumbnailInfo) -> str:
    """``remote_thumbnails/<server>/ab/cd/efgh/<w>-<h>-<method>-<type>`` (the type is
    one of ``THUMBNAIL_TYPES``, its ``/`` made a ``-``)."""
    m = t.media_id
    return (f"remote_thumbnails/{t.server_name}/{m[:2]}/{m[2:4]}/{m[4:]}/"
            f"{t.width}-{t.height}-{t.method}-{t.content_type.replace('/', '-')}")


def valid_server_name(name: str) -> bool:
    from homeserver.handlers.server_blocks import SERVER_NAME

    return bool(SERVER_NAME.match(name)) and name.strip(".") != "" and ".." not in name


@dataclass(frozen=True)
class _Staged:
    path: str
    size: int
    sha256: str


class RemoteMediaCache:
    def __init__(self, media: MediaHandler, store: RemoteMediaStore, clock: Clock,
                 max_cache_bytes: int, fetch: RemoteFetch, thumbnail: RemoteThumbnail) -> None:
        self._media = media
        self._store = store
        self._clock = clock
        self._max_bytes = max_cache_bytes
        self._fetch = fetch
        self._thumbnail = thumbnail
        self._staging = os.path.join(media.config.media_dir, "tmp")
        os.makedirs(self._staging, exist_ok=True)
        self._fetching: dict[tuple[str, str], list[defer.Deferred[RemoteMediaInfo]]] = {}
        # (server, media id, width, height, method) being fetched -> callers waiting.
        self._fetching_thumbs: dict[tuple[str, str, int, int, str],
                                    list[defer.Deferred[tuple[str, bytes]]]] = {}
        self._fetch_slots = defer.DeferredSemaphore(FETCH_CONCURRENCY)

    def _check(self, server_name: str, media_id: str) -> None:
        if not MEDIA_ID.match(media_id) or not valid_server_name(server_name):
            raise not_found()

    async def get_media(self, server_name: str, media_id: str, timeout_ms: int
                        ) -> RemoteMediaInfo:
        """The cached media, fetched first if needed; 404 if quarantined or unknown."""
        self._check(server_name, media_id)
        info = await self._store.get(server_name, media_id)
        if info is not None:
            if info.quarantined:
                raise not_found()
            now = self._clock.time_msec()
            if now - info.last_access_ts >= _TOUCH_EVERY_MS:
                await self._store.touch(server_name, media_id, now)
            return info
        return await self._fetch_once(server_name, media_id, timeout_ms)

    async def open_media(self, info: RemoteMediaInfo) -> tuple[BinaryIO, int, Any]:
        opened = await self._media.backend.open(remote_key(info.server_name, info.media_id))
        if opened is None:  # evicted under us, or the file was lost: forget the row
            await self._store.delete(info.server_name, info.media_id)
            raise not_found()
        return opened

    async def thumbnail(self, server_name: str, media_id: str, width: int, height: int,
                        method: str, timeout_ms: int) -> tuple[str, bytes]:
        """(content type, bytes) of the configured size serving the request: from the
        cache, else asked from the remote server (once however many ask) and cached."""
        self._check(server_name, media_id)
        origin = await self._store.get(server_name, media_id)
        if origin is not None and origin.quarantined:
            raise not_found()
        size = thumbnailer.select_size(self._media.config.thumbnail_sizes, width, height,
                                       method)
        cached = await self._store.get_thumbnail(server_name, media_id, size.width,
                                                 size.height, size.method)
        if cached is not None:
            data = await self._media.backend.read_bytes(remote_thumbnail_key(cached))
            if data is not None:
                now = self._clock.time_msec()
                if now - cached.last_access_ts >= _TOUCH_EVERY_MS:
                    await self._store.touch_thumbnail(cached, now)
                return cached.content_type, data
            await self._store.delete_thumbnail(cached)  # the file was lost or evicted
        key = (server_name, media_id, size.width, size.height, size.method)
        waiting = self._fetching_thumbs.get(key)
        if waiting is not None:
            d: defer.Deferred[tuple[str, bytes]] = defer.Deferred()
            waiting.append(d)
            return await d
        self._fetching_thumbs[key] = []
        try:
            result = await self._fetch_slots.run(lambda: defer.ensureDeferred(
                self._fetch_thumbnail(server_name, media_id, size.width, size.height,
                                      size.method, timeout_ms)))
        except BaseException as e:
            for d in self._fetching_thumbs.pop(key, []):
                d.errback(failure.Failure(e))
            raise
        for d in self._fetching_thumbs.pop(key, []):
            d.callback(result)
        return result

    async def _fetch_thumbnail(self, server_name: str, media_id: str, width: int,
                               height: int, method: str, timeout_ms: int
                               ) -> tuple[str, bytes]:
        ctype, data = await self._thumbnail(server_name, media_id, width, height, method,
                                            timeout_ms)
        if len(data) > MAX_THUMBNAIL_BYTES:
            raise MatrixError(502, "Remote thumbnail is too large", Codes.TOO_LARGE)
        ctype = clean_type(ctype)
        if ctype not in THUMBNAIL_TYPES:
            raise MatrixError(502, "The remote server sent no image", Codes.UNKNOWN)
        staged = await deferToThread(self._stage, data)
        try:
            if await self._store.is_hash_quarantined(staged.sha256):
                raise not_found()
            reason = await self._media.scan(staged.path, ctype, staged.sha256)
            if reason:
                logger.info("remote thumbnail refused by the scanner: %s", reason)
                raise not_found()
            now = self._clock.time_msec()
            info = RemoteThumbnailInfo(server_name, media_id, width, height, method, ctype,
                                       staged.size, staged.sha256, now, now)
            await self._media.backend.store_file(remote_thumbnail_key(info), staged.path,
                                                 ctype)
        finally:
            if os.path.exists(staged.path):
                os.unlink(staged.path)
        await self._store.insert_thumbnail(info)
        # Quarantined while we fetched: drop what we just cached.
        origin = await self._store.get(server_name, media_id)
        if origin is not None and origin.quarantined:
            await self._drop_thumbnails(server_name, media_id)
            raise not_found()
        await self._evict(keep=_entry_key(CacheEntry(server_name, media_id, info.size, now,
                                                     info)))
        return ctype, data

    async def _drop_thumbnails(self, server_name: str, media_id: str) -> None:
        for thumb in await self._store.list_thumbnails(server_name, media_id):
            await self._media.backend.delete(remote_thumbnail_key(thumb))
            await self._store.delete_thumbnail(thumb)

    async def quarantine(self, server_name: str, media_id: str, by: str) -> None:
        """Quarantine a cached remote media (and its content), dropping its file and its
        thumbnails; 404 if nothing of it is cached."""
        self._check(server_name, media_id)
        if not await self._store.quarantine(server_name, media_id, by, self._clock.time_msec()):
            raise not_found()
        await self._media.backend.delete(remote_key(server_name, media_id))
        await self._drop_thumbnails(server_name, media_id)

    async def purge(self, before_ts: int) -> int:
        """Drop cached files and thumbnails not served since ``before_ts`` (not the
        quarantine rows); returns how many remote media lost something."""
        purged: set[tuple[str, str]] = set()
        while True:
            batch = await self._store.media_not_accessed_since(before_ts, EVICT_BATCH)
            for server_name, media_id in batch:
                await self._media.backend.delete(remote_key(server_name, media_id))
                await self._store.delete(server_name, media_id)
                await self._drop_thumbnails(server_name, media_id)
                purged.add((server_name, media_id))
            if len(batch) < EVICT_BATCH:
                break
        while True:
            thumbs = await self._store.thumbnails_not_accessed_since(before_ts, EVICT_BATCH)
            for thumb in thumbs:
                await self._media.backend.delete(remote_thumbnail_key(thumb))
                await self._store.delete_thumbnail(thumb)
                purged.add((thumb.server_name, thumb.media_id))
            if len(thumbs) < EVICT_BATCH:
                break
        return len(purged)

    # -- fetching -------------------------------------------------------------------

    async def _fetch_once(self, server_name: str, media_id: str, timeout_ms: int
                          ) -> RemoteMediaInfo:
        key = (server_name, media_id)
        waiting = self._fetching.get(key)
        if waiting is not None:
            d: defer.Deferred[RemoteMediaInfo] = defer.Deferred()
            waiting.append(d)
            return await d
        self._fetching[key] = []
        try:
            info = await self._fetch_slots.run(lambda: defer.ensureDeferred(
                self._fetch_and_store(server_name, media_id, timeout_ms)))
        except BaseException as e:
            for d in self._fetching.pop(key, []):
                d.errback(failure.Failure(e))
            raise
        for d in self._fetching.pop(key, []):
            d.callback(info)
        return info

    def _stage(self, data: bytes) -> _Staged:
        fd, path = tempfile.mkstemp(dir=self._staging, prefix="remote-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return _Staged(path, len(data), hashlib.sha256(data).hexdigest())

    async def _fetch_and_store(self, server_name: str, media_id: str, timeout_ms: int
                               ) -> RemoteMediaInfo:
        limit = self._media.config.max_upload_size
        ctype, data = await self._fetch(server_name, media_id, limit, timeout_ms)
        if len(data) > limit:
            raise MatrixError(502, "Remote media is too large", Codes.TOO_LARGE)
        ctype = clean_type(ctype)
        staged = await deferToThread(self._stage, data)
        del data
        try:
            if await self._store.is_hash_quarantined(staged.sha256):
                logger.info("remote media has quarantined content; not served")
                raise not_found()
            reason = await self._media.scan(staged.path, ctype, staged.sha256)
            if reason:
                logger.info("remote media refused by the scanner: %s", reason)
                raise not_found()
            await self._media.backend.store_file(remote_key(server_name, media_id),
                                                 staged.path, ctype)
        finally:
            if os.path.exists(staged.path):
                os.unlink(staged.path)
        now = self._clock.time_msec()
        info = RemoteMediaInfo(server_name, media_id, ctype, staged.size, staged.sha256, now,
                               now, False)
        await self._store.insert(info)
        await self._evict(keep=(server_name, media_id))
        stored = await self._store.get(server_name, media_id)
        if stored is None or stored.quarantined:
            raise not_found()
        return stored

    async def _evict(self, keep: tuple[object, ...]) -> None:
        """Drop the least recently served files and thumbnails (never ``keep``, the one
        just fetched) until the cache fits its bound."""
        total = await self._store.total_size()
        while total > self._max_bytes:
            victims = [v for v in await self._store.least_recently_used(EVICT_BATCH)
                       if _entry_key(v) != keep]
            if not victims:
                return
            for victim in victims:
                if total <= self._max_bytes:
                    return
                if victim.thumbnail is not None:
                    await self._media.backend.delete(remote_thumbnail_key(victim.thumbnail))
                    await self._store.delete_thumbnail(victim.thumbnail)
                else:
                    await self._media.backend.delete(remote_key(victim.server_name,
                                                                victim.media_id))
                    await self._store.delete(victim.server_name, victim.media_id)
                total -= victim.size


def _entry_key(e: CacheEntry) -> tuple[object, ...]:
    t = e.thumbnail
    return (e.server_name, e.media_id) if t is None else (
        e.server_name, e.media_id, t.width, t.height, t.method, t.content_type)
