"""Other servers' media for local clients: fetched over federation on first request,
then served from a size-bounded cache.

The fetch itself is a hook set by federation (federation/media_servlets.py: the
authenticated federation media endpoint, then the legacy one), so nothing here knows
about federation. A file is at most ``media.max_upload_size`` bytes (larger is 502
``M_TOO_LARGE``, nothing kept); it is hashed and scanned like an upload before it is
cached, and content whose sha256 is quarantined is refused (404) whatever server or id
it comes under. The cache holds at most ``media.remote_cache_max_bytes``: past that,
the least recently served files are evicted. One fetch per media however many clients
ask at once. Thumbnails are asked from the remote server each time (not cached) and
refused for media quarantined here.
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
from homeserver.media.handler import MEDIA_ID, MediaHandler, not_found
from plugins.media_scan import base_type
from storage.stores.remote_media import RemoteMediaInfo, RemoteMediaStore

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
        self._check(server_name, media_id)
        cached = await self._store.get(server_name, media_id)
        if cached is not None and cached.quarantined:
            raise not_found()
        ctype, data = await self._thumbnail(server_name, media_id, width, height, method,
                                            timeout_ms)
        ctype = clean_type(ctype)
        if ctype not in THUMBNAIL_TYPES:
            raise MatrixError(502, "The remote server sent no image", Codes.UNKNOWN)
        sha256 = hashlib.sha256(data).hexdigest()
        if await self._store.is_hash_quarantined(sha256):
            raise not_found()
        return ctype, data

    async def quarantine(self, server_name: str, media_id: str, by: str) -> None:
        """Quarantine a cached remote media (and its content) and drop its file."""
        self._check(server_name, media_id)
        if not await self._store.quarantine(server_name, media_id, by, self._clock.time_msec()):
            raise not_found()
        await self._media.backend.delete(remote_key(server_name, media_id))

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

    async def _evict(self, keep: tuple[str, str]) -> None:
        """Drop least recently served files (never ``keep``, the one just fetched)
        until the cache fits its bound."""
        total = await self._store.total_size()
        while total > self._max_bytes:
            victims = [v for v in await self._store.least_recently_used(EVICT_BATCH)
                       if (v.server_name, v.media_id) != keep]
            if not victims:
                return
            for victim in victims:
                if total <= self._max_bytes:
                    return
                await self._media.backend.delete(remote_key(victim.server_name,
                                                            victim.media_id))
                await self._store.delete(victim.server_name, victim.media_id)
                total -= victim.size
