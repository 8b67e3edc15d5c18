"""Media administration beyond one media at a time (issue 15): a user's and a room's
media (metadata only), bulk quarantine of a user's or a room's media, protection from
bulk quarantine, deletion (a user's media, local media older than a date) and the purge
of the remote media cache.

Quarantine and deletion reuse :class:`~homeserver.media.handler.MediaHandler` (which also
quarantines by content hash and drops cached thumbnails). Every change is audited here,
with ids and counts only.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.admin_users import Actor
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import split_user_id
from homeserver.media.handler import MEDIA_ID, MediaHandler
from storage.stores.events import EventStore
from storage.stores.media import AdminMediaRow, MediaStore
from storage.stores.rooms import RoomStore
from storage.stores.users import UserStore

# Room events are read in chunks of this many; a room has at most this many media listed.
ROOM_SCAN_CHUNK = 200
MAX_ROOM_MEDIA = 100_000
DELETE_BATCH = 500


async def audit_action(events: SecurityEventRecorder, actor: Actor, action: str,
                       target: str | None, **details: Any) -> None:
    """One successful ``admin_action`` entry, as the users admin API writes them."""
    r = actor.requester
    await events.record("admin_action", "success", actor.client, user_id=r.user_id,
                        device_id=r.device_id, session_id=r.session_id, target=target,
                        details={"action": action, "role": actor.role, **details})


def mxc_uris(content: Any) -> list[str]:
    """The mxc:// URIs an event's content references (``url`` and
    ``info.thumbnail_url``, what Synapse's room media listing reads)."""
    if not isinstance(content, dict):
        return []
    found = [content.get("url")]
    info = content.get("info")
    if isinstance(info, dict):
        found.append(info.get("thumbnail_url"))
    return [u for u in found if isinstance(u, str) and u.startswith("mxc://")]


def media_json(row: AdminMediaRow) -> dict[str, Any]:
    """Synapse's shape of a user's media entry (no upload name: Parley stores none)."""
    info = row.info
    return {"media_id": info.media_id, "media_type": info.content_type,
            "media_length": info.size, "upload_name": None, "created_ts": info.created_ts,
            "last_access_ts": None, "quarantined_by": "quarantined" if info.quarantined
            else None, "safe_from_quarantine": row.protected}


class AdminMediaBulkHandler:
    def __init__(self, media: MediaHandler, store: MediaStore, events: EventStore,
                 rooms: RoomStore, users: UserStore, audit: SecurityEventRecorder) -> None:
        self._media = media
        self._store = store
        self._events = events
        self._rooms = rooms
        self._users = users
        self._audit = audit
        self.server_name = media.server_name

    async def _local_user(self, user_id: str) -> None:
        try:
            _, server = split_user_id(user_id)
        except MatrixError as e:
            raise MatrixError(400, "Invalid user id", Codes.INVALID_PARAM) from e
        if server != self.server_name:
            raise MatrixError(400, "Can only look up local users", Codes.INVALID_PARAM)
        if await self._users.get_user(user_id) is None:
            raise MatrixError(404, "Unknown user", Codes.NOT_FOUND)

    async def _room(self, room_id: str) -> None:
        if await self._rooms.get_room(room_id) is None:
            raise MatrixError(404, "Room not found", Codes.NOT_FOUND)

    # -- reads (metadata only) --

    async def user_media(self, user_id: str, order_by: str, descending: bool, offset: int,
                         limit: int) -> tuple[list[AdminMediaRow], int]:
        await self._local_user(user_id)
        return await self._store.list_by_owner(user_id, order_by, descending, offset, limit)

    async def room_media(self, room_id: str) -> tuple[list[str], list[str]]:
        """(local, remote) mxc URIs the room's events reference, read through the event
        store (content sealed at rest is opened there). Encrypted events reference
        their media inside the ciphertext, so they add nothing, as in Synapse."""
        await self._room(room_id)
        seen: dict[str, None] = {}
        after = 0
        while len(seen) < MAX_ROOM_MEDIA:
            page = await self._store.room_event_ids(room_id, after, ROOM_SCAN_CHUNK)
            if not page:
                break
            loaded = await self._events.get_events(eid for eid, _ in page)
            for eid, _ in page:
                event = loaded.get(eid)
                if event is not None:
                    for uri in mxc_uris(event.pdu.get("content")):
                        seen.setdefault(uri, None)
            after = page[-1][1]
        local_prefix = f"mxc://{self.server_name}/"
        local = [u for u in seen if u.startswith(local_prefix)]
        remote = [u for u in seen if not u.startswith(local_prefix)]
        return local, remote

    # -- changes (audited) --

    async def _quarantine_ids(self, actor: Actor, media_ids: list[str]) -> int:
        done = 0
        for media_id in await self._store.unprotected(media_ids):
            try:
                await self._media.quarantine(self.server_name, media_id, actor.requester.user_id)
            except MatrixError as e:
                if e.code != 404:  # deleted meanwhile: nothing to quarantine
                    raise
                continue
            done += 1
        return done

    async def quarantine_user_media(self, actor: Actor, user_id: str) -> int:
        """Quarantine every unprotected media ``user_id`` uploaded; returns how many."""
        await self._local_user(user_id)
        ids = await self._store.owner_media_ids(user_id, include_protected=False)
        n = await self._quarantine_ids(actor, ids)
        await audit_action(self._audit, actor, "quarantine_user_media", user_id,
                           user_id=user_id, num_quarantined=n)
        return n

    async def quarantine_room_media(self, actor: Actor, room_id: str) -> int:
        """Quarantine the unprotected local media the room's events reference (Parley
        keeps no remote media cache, so remote URIs have nothing to quarantine)."""
        local, _ = await self.room_media(room_id)
        prefix = f"mxc://{self.server_name}/"
        ids = [u[len(prefix):] for u in local if MEDIA_ID.match(u[len(prefix):])]
        n = await self._quarantine_ids(actor, ids)
        await audit_action(self._audit, actor, "quarantine_room_media", room_id,
                           room_id=room_id, num_quarantined=n)
        return n

    async def set_protected(self, actor: Actor, media_id: str, protected: bool) -> None:
        if not MEDIA_ID.match(media_id) or not await self._store.set_protected(media_id,
                                                                            protected):
            raise MatrixError(404, "Unknown media", Codes.NOT_FOUND)
        await audit_action(self._audit, actor,
                           "protect_media" if protected else "unprotect_media", None,
                           media_id=media_id)

    async def _delete_ids(self, media_ids: list[str]) -> list[str]:
        deleted: list[str] = []
        for media_id in media_ids:
            try:
                await self._media.delete(self.server_name, media_id)
            except MatrixError as e:
                if e.code != 404:
                    raise
                continue
            deleted.append(media_id)
        return deleted

    async def delete_user_media(self, actor: Actor, user_id: str, order_by: str,
                                descending: bool, offset: int, limit: int) -> list[str]:
        """Delete the page of ``user_id``'s media the same parameters would list
        (Synapse's DELETE /users/{userId}/media), files and thumbnails included."""
        rows, _ = await self.user_media(user_id, order_by, descending, offset, limit)
        deleted = await self._delete_ids([r.info.media_id for r in rows])
        await audit_action(self._audit, actor, "delete_user_media", user_id,
                           user_id=user_id, total=len(deleted))
        return deleted

    async def delete_before(self, actor: Actor, before_ts: int, size_gt: int,
                            keep_profiles: bool) -> list[str]:
        """Delete unprotected local media uploaded before ``before_ts`` (in batches
        until none is left)."""
        deleted: list[str] = []
        while True:
            batch = await self._store.media_ids_before(before_ts, size_gt, keep_profiles,
                                                       self.server_name, DELETE_BATCH)
            if not batch:
                break
            done = await self._delete_ids(batch)
            deleted += done
            if not done:  # every one vanished meanwhile: avoid spinning
                break
        await audit_action(self._audit, actor, "delete_old_media", None,
                           before_ts=before_ts, size_gt=size_gt, keep_profiles=keep_profiles,
                           total=len(deleted))
        return deleted

    async def purge_media_cache(self, actor: Actor, before_ts: int) -> int:
        """Drop cached remote media and thumbnails not served since ``before_ts``
        (Synapse's purge_media_cache); 0 when this server caches none (federation off)."""
        remote = self._media.remote
        deleted = await remote.purge(before_ts) if remote is not None else 0
        await audit_action(self._audit, actor, "purge_media_cache", None,
                           before_ts=before_ts, deleted=deleted)
        return int(deleted)
